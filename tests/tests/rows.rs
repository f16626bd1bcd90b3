//! The whole Edge's rule table through the real XDP program, packet by packet
//! (BPF_PROG_TEST_RUN): the vendor's external and internal tables, UDP flows, port
//! ranges, ICMP errors related to live flows, peer sets, disabled rows and a table of
//! 64 rows. Each case checks the verdict, the NIC's counter and the hit counter of
//! the row that opened it.
//!
//! Privileged: run as root.

use std::{thread::sleep, time::Duration};

use edge_filter::{
    AddressSets, Policy, Proto, RuleTable, SetId, Timeouts,
    rules::{RowSpec, TableSpec},
};
use edge_filter_common::verdict::*;
use edge_filter_tests::{
    Case, Harness,
    Nic::*,
    packet::{flags::*, icmp_error, tcp, udp},
    plan::*,
    row_slot,
};

/// The plan's sets, with the Web Conferencing Edge on the Access Edge's address (a
/// shared address), the A/V Edge on an address of its own, and the partners as a peer
/// set.
fn edge_sets() -> AddressSets {
    let mut s = sets();
    insert_prefixes(&mut s, SetId::WEBCONF_EDGE, &["203.0.113.10", "2001:db8:203::10"]);
    // The A/V Edge's own address (`Fam::av`), beside access-edge's.
    insert_prefixes(&mut s, SetId::AV_EDGE, &["203.0.113.11", "2001:db8:203::11"]);
    let partners = s.add_peer("partners").unwrap();
    insert_prefixes(&mut s, partners, &["198.51.100.0/24", "2001:db8:5100::/48"]);
    s
}

fn spec(tables: &[&str]) -> TableSpec {
    TableSpec { tables: tables.iter().map(|t| t.to_string()).collect(), ..TableSpec::default() }
}

/// [`spec`] with the row `disabled` disabled.
fn spec_without(tables: &[&str], disabled: &str) -> TableSpec {
    TableSpec { disable: vec![disabled.into()], ..spec(tables) }
}

fn policy(spec: &TableSpec, sets: &AddressSets) -> Policy {
    Policy { rules: RuleTable::build(spec, sets).unwrap_or_else(|e| panic!("{e}")), ..Policy::default() }
}

fn run(policy: &Policy, sets: &AddressSets, cases: &[Case]) -> Harness {
    let h = Harness::with_sets(policy.clone(), sets).unwrap_or_else(|e| panic!("{e:#}"));
    h.check_all(cases).unwrap_or_else(|e| panic!("{e:#}"));
    h
}

#[test]
fn the_whole_edge_opens_each_service_and_nothing_beside_it() {
    let sets = edge_sets();
    let p = policy(&spec(&["lync-edge-external", "lync-edge-internal"]), &sets);
    let cases = both_families(|f| {
        let rule = |what: &str, nic, frame, id: &str| f.rule(what, nic, frame, row_slot(&p, id));
        let no = |what: &str, nic, frame| f.case(what, nic, frame, DROP_NO_RULE);
        [
            rule("SIP federation in", Outside, tcp(f.partner, f.access, 40000, 5061, SYN).build(), "sip-federation-in"),
            rule("SIP federation out", Edge, tcp(f.access, f.partner, 40001, 5061, SYN).build(), "sip-federation-out"),
            // 443 on the shared address is the Access Edge's SIP and the Web
            // Conferencing Edge's PSOM: counted under the first row of the table.
            rule("TCP 443 to access-edge", Outside, tcp(f.partner, f.access, 40002, 443, SYN).build(), "sip-client-in"),
            rule("STUN over TCP 443 to av-edge", Outside, tcp(f.partner, f.av, 40003, 443, SYN).build(), "stun-tcp-in"),
            rule("STUN request to av-edge", Outside, udp(f.partner, f.av, 40004, 3478).build(), "stun-udp-in"),
            f.case("STUN answer", Edge, udp(f.av, f.partner, 3478, 40004).build(), PASS_REPLY),
            rule("DNS query from access-edge", Edge, udp(f.access, f.partner, 40005, 53).build(), "dns-udp-out"),
            f.case("DNS answer", Outside, udp(f.partner, f.access, 53, 40005).build(), PASS_REPLY),
            rule("DNS over TCP", Edge, tcp(f.access, f.partner, 40006, 53, SYN).build(), "dns-tcp-out"),
            rule("CRL fetch", Edge, tcp(f.access, f.partner, 40007, 80, SYN).build(), "crl-out"),
            rule("Front End to internal-edge 5061", Outside, tcp(f.frontend, f.internal, 40010, 5061, SYN).build(), "sip-internal-in"),
            rule("Front End to internal-edge 8057", Outside, tcp(f.frontend, f.internal, 40011, 8057, SYN).build(), "psom-internal"),
            rule("Front End to internal-edge 5062", Outside, tcp(f.frontend, f.internal, 40012, 5062, SYN).build(), "av-auth"),
            rule("Front End to internal-edge 4443", Outside, tcp(f.frontend, f.internal, 40013, 4443, SYN).build(), "cms-replication"),
            rule("the Edge to a Front End 5061", Edge, tcp(f.internal, f.frontend, 40014, 5061, SYN).build(), "sip-internal-out"),
            no("TCP 22 to access-edge", Outside, tcp(f.partner, f.access, 40020, 22, SYN).build()),
            no("UDP 3478 to access-edge (av-edge is another address)", Outside, udp(f.partner, f.access, 40021, 3478).build()),
            no("an unsolicited datagram from 3478", Outside, udp(f.partner, f.av, 3478, 40022).build()),
            no("an unsolicited datagram from 53", Outside, udp(f.partner, f.access, 53, 40023).build()),
            no("UDP 8057 to internal-edge (the row is TCP)", Outside, udp(f.frontend, f.internal, 40024, 8057).build()),
            no("TCP 5062 to access-edge (an internal row)", Outside, tcp(f.partner, f.access, 40025, 5062, SYN).build()),
        ]
    });
    run(&p, &sets, &cases);
}

#[test]
fn ranges_take_their_edges_and_not_one_past() {
    let sets = edge_sets();
    let mut s = spec(&["lync-edge-external", "lync-edge-internal"]);
    s.ports.set("MediaCommunicationPortStart", 50000).unwrap();
    s.ports.set("MediaCommunicationPortCount", 10000).unwrap();
    let p = policy(&s, &sets);
    let mut cases = Vec::new();
    for f in [V4, V6] {
        for (port, want) in [(49999, None), (50000, Some(())), (55555, Some(())), (59999, Some(())), (60000, None)] {
            for (proto, id) in [(Proto::Tcp, "rtp-tcp-in"), (Proto::Udp, "rtp-udp-in")] {
                let frame = match proto {
                    Proto::Tcp => tcp(f.partner, f.av, 40000, port, SYN).build(),
                    Proto::Udp => udp(f.partner, f.av, 40000, port).build(),
                };
                let what = format!("{} to av-edge:{port}", proto.name());
                cases.push(match want {
                    Some(()) => f.rule(what, Outside, frame, row_slot(&p, id)),
                    None => f.case(what, Outside, frame, DROP_NO_RULE),
                });
            }
        }
        for (port, opens) in [(50000, false), (50001, true), (50003, true), (50004, false)] {
            let frame = tcp(f.frontend, f.internal, 40100, port, SYN).build();
            let what = format!("logging to internal-edge:{port}");
            cases.push(if opens { f.rule(what, Outside, frame, row_slot(&p, "logging")) } else { f.case(what, Outside, frame, DROP_NO_RULE) });
        }
        // Replies come from the row's range: the media the Edge sends from 59999 is
        // answered to 59999, and the answer passes; from 60000 nothing was opened.
        cases.extend([
            f.rule("media out from the range's last port", Edge, udp(f.av, f.partner, 59999, 59999).build(), row_slot(&p, "rtp-udp-out")),
            // Between two rows' ports, the answer is its flow's reply before it is a
            // row's opener (rtp-udp-in), as conntrack finds the connection first.
            f.case("its answer", Outside, udp(f.partner, f.av, 59999, 59999).build(), PASS_REPLY),
            f.case("media out one past the range", Edge, udp(f.av, f.partner, 60000, 60000).build(), DROP_NO_RULE),
            f.case("an answer one past the range", Outside, udp(f.partner, f.av, 60000, 60000).build(), DROP_NO_RULE),
        ]);
    }
    run(&p, &sets, &cases);
}

#[test]
fn udp_flows_pass_replies_on_the_reply_role_only() {
    let sets = edge_sets();
    let p = policy(&spec(&["lync-edge-external"]), &sets);
    let cases = both_families(|f| {
        [
            f.case("a reply before the flow", Outside, udp(f.partner, f.av, 3478, 40300).build(), DROP_NO_RULE),
            f.rule("the Edge's STUN request out", Edge, udp(f.av, f.partner, 40300, 3478).build(), row_slot(&p, "stun-udp-out")),
            f.case("the answer on the Edge's NIC (wrong role)", Edge, udp(f.partner, f.av, 3478, 40300).build(), DROP_NO_RULE),
            f.case("the answer from outside", Outside, udp(f.partner, f.av, 3478, 40300).build(), PASS_REPLY),
            f.case("the answer on a host NIC", Host, udp(f.partner, f.av, 3478, 40300).build(), PASS_REPLY),
            f.case("from the same partner, another port", Outside, udp(f.partner, f.av, 3478, 40301).build(), DROP_NO_RULE),
            f.case("from another address", Outside, udp(f.frontend, f.av, 3478, 40300).build(), DROP_NO_RULE),
        ]
    });
    let h = run(&p, &sets, &cases);
    assert_eq!(h.filter.maps().udp_flows().unwrap().len(), 2, "one UDP flow per family");
    assert!(h.filter.maps().flows().unwrap().is_empty() && h.filter.maps().embryos().unwrap().is_empty(), "UDP stays out of the TCP tables");
}

#[test]
fn udp_flows_expire_after_the_udp_timeout() {
    let sets = edge_sets();
    let mut p = policy(&spec(&["lync-edge-external"]), &sets);
    p.timeouts = Timeouts { udp: Duration::from_millis(300), ..p.timeouts };
    let h = Harness::with_sets(p.clone(), &sets).unwrap_or_else(|e| panic!("{e:#}"));
    for f in [V4, V6] {
        h.check_all(&[
            f.rule("DNS query", Edge, udp(f.access, f.partner, 40400, 53).build(), row_slot(&p, "dns-udp-out")),
            f.case("answer within the timeout", Outside, udp(f.partner, f.access, 53, 40400).build(), PASS_REPLY),
        ])
        .unwrap_or_else(|e| panic!("{e:#}"));
    }
    sleep(Duration::from_millis(150));
    for f in [V4, V6] {
        // Traffic keeps it alive: a second answer 150 ms later refreshes the flow.
        h.check_all(&[f.case("a later answer", Outside, udp(f.partner, f.access, 53, 40400).build(), PASS_REPLY)])
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    sleep(Duration::from_millis(200));
    for f in [V4, V6] {
        h.check_all(&[f.case("200 ms after the last", Outside, udp(f.partner, f.access, 53, 40400).build(), PASS_REPLY)])
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    sleep(Duration::from_millis(600));
    for f in [V4, V6] {
        h.check_all(&[f.case("after the timeout", Outside, udp(f.partner, f.access, 53, 40400).build(), DROP_NO_RULE)])
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    let ev = h.filter.maps().flow_events().unwrap();
    assert_eq!((ev.udp.created, ev.udp.expired, ev.udp.live), (2, 2, 0), "{ev:?}");
}

#[test]
fn icmp_errors_relate_to_live_flows_only() {
    let sets = edge_sets();
    let p = policy(&spec(&["lync-edge-external", "lync-edge-internal"]), &sets);
    let mut cases = Vec::new();
    for f in [V4, V6] {
        let router = f.frontend;
        // A live TCP flow (federation-in, 40500 -> 5269) and a live UDP flow (the
        // Edge's STUN request, 40501 -> 3478).
        cases.extend([
            f.rule("federation SYN", Outside, tcp(f.partner, f.access, 40500, 5269, SYN).seq_ack(1000, 0).build(), row_slot(&p, "federation-in")),
            f.case("SYN-ACK", Edge, tcp(f.access, f.partner, 5269, 40500, SYN_ACK).seq_ack(5000, 1001).build(), PASS_REPLY),
            f.rule("ACK", Outside, tcp(f.partner, f.access, 40500, 5269, ACK).seq_ack(1001, 5001).build(), row_slot(&p, "federation-in")),
            f.rule("STUN out", Edge, udp(f.av, f.partner, 40501, 3478).build(), row_slot(&p, "stun-udp-out")),
        ]);
        let edge_to_partner = tcp(f.access, f.partner, 5269, 40500, ACK).payload(1400);
        let partner_to_edge = tcp(f.partner, f.access, 40500, 5269, ACK);
        let stun = udp(f.av, f.partner, 40501, 3478);
        cases.extend([
            f.case(
                "too big from a router, quoting the Edge's segment",
                Outside,
                icmp_error(router, f.access, f.frag_needed.0, f.frag_needed.1, &edge_to_partner).build(),
                PASS_RELATED,
            ),
            f.case(
                "unreachable from the Edge, quoting the partner's segment",
                Edge,
                icmp_error(f.access, f.partner, f.unreachable.0, f.unreachable.1, &partner_to_edge).build(),
                PASS_RELATED,
            ),
            f.case(
                "port unreachable quoting the Edge's live datagram",
                Outside,
                icmp_error(f.partner, f.av, f.unreachable.0, f.unreachable.1, &stun).build(),
                PASS_RELATED,
            ),
            f.case(
                "too big quoting a segment of no flow",
                Outside,
                icmp_error(router, f.access, f.frag_needed.0, f.frag_needed.1, &tcp(f.access, f.partner, 5269, 40599, ACK)).build(),
                DROP_NO_RULE,
            ),
            f.case(
                "unreachable quoting a datagram of no flow",
                Outside,
                icmp_error(f.partner, f.av, f.unreachable.0, f.unreachable.1, &udp(f.av, f.partner, 40599, 3478)).build(),
                DROP_NO_RULE,
            ),
            f.case(
                "an error quoting UDP where the flow is TCP",
                Outside,
                icmp_error(router, f.access, f.frag_needed.0, f.frag_needed.1, &udp(f.access, f.partner, 5269, 40500)).build(),
                DROP_NO_RULE,
            ),
            f.case(
                "an error whose quote stops before the ports",
                Outside,
                {
                    let mut e = icmp_error(router, f.access, f.frag_needed.0, f.frag_needed.1, &edge_to_partner);
                    e = e.cut_l4(8 + if f.tag == "v4" { 20 } else { 40 } + 2);
                    e.build()
                },
                DROP_NO_RULE,
            ),
            f.case(
                "a spoofed error from an edge address on outside",
                Outside,
                icmp_error(f.access, f.partner, f.unreachable.0, f.unreachable.1, &partner_to_edge).build(),
                DROP_SPOOFED,
            ),
        ]);
    }
    run(&p, &sets, &cases);
}

#[test]
fn a_peer_set_restricts_a_row_to_its_addresses() {
    let sets = edge_sets();
    let mut s = spec_without(&["xmpp-federation"], "federation-in");
    s.rows.push(RowSpec {
        id: "federation-in-partners".into(),
        proto: Proto::Tcp,
        ports: "5269".parse().unwrap(),
        source: "partners".into(),
        destination: "access-edge".into(),
    });
    let p = policy(&s, &sets);
    let cases = both_families(|f| {
        [
            f.rule("a partner of the peer set", Outside, tcp(f.partner, f.access, 40600, 5269, SYN).build(), row_slot(&p, "federation-in-partners")),
            f.case("a source outside the peer set", Outside, tcp(f.frontend, f.access, 40601, 5269, SYN).build(), DROP_NO_RULE),
            f.rule("federation out is still any", Edge, tcp(f.access, f.frontend, 40602, 5269, SYN).build(), row_slot(&p, "federation-out")),
            // A peer address is not policed: traffic between it and a non-edge
            // address is unpoliced, and a peer source on outside is no spoof.
            f.case("peer to a non-edge address", Outside, tcp(f.partner, f.frontend, 40603, 22, SYN).build(), PASS_UNPOLICED),
        ]
    });
    run(&p, &sets, &cases);
}

#[test]
fn a_disabled_row_opens_nothing_and_its_table_mates_still_do() {
    let sets = edge_sets();
    let s = spec_without(&["xmpp-federation"], "federation-out");
    let p = policy(&s, &sets);
    assert_eq!(p.rules.rows().len(), 2);
    let cases = both_families(|f| {
        [
            f.case("federation out, disabled", Edge, tcp(f.access, f.partner, 40700, 5269, SYN).build(), DROP_NO_RULE),
            f.rule("federation in", Outside, tcp(f.partner, f.access, 40701, 5269, SYN).build(), row_slot(&p, "federation-in")),
            f.rule("internal MTLS", Outside, tcp(f.frontend, f.internal, 40702, 23456, SYN).build(), row_slot(&p, "internal-mtls")),
        ]
    });
    run(&p, &sets, &cases);
}

/// 64 rows, the most the table holds: each row's port opens, in particular the last
/// row's, and the port after it does not.
#[test]
fn a_table_of_sixty_four_rows_judges_its_last_row() {
    let sets = edge_sets();
    let mut s = spec(&["xmpp-federation"]);
    for i in 0..61u16 {
        s.rows.push(RowSpec {
            id: format!("row-{i}"),
            proto: if i % 2 == 0 { Proto::Tcp } else { Proto::Udp },
            ports: PortOf(1000 + i).into(),
            source: "any".into(),
            destination: "access-edge".into(),
        });
    }
    let p = policy(&s, &sets);
    assert_eq!(p.rules.rows().len(), 64);
    let mut too_many = s.clone();
    too_many.rows.push(RowSpec { id: "row-61".into(), ..s.rows[0].clone() });
    assert_eq!(RuleTable::build(&too_many, &sets).unwrap_err().to_string(), "65 rows: the table holds at most 64");
    let cases = both_families(|f| {
        [
            f.rule("the first row", Outside, tcp(f.partner, f.access, 40800, 5269, SYN).build(), row_slot(&p, "federation-in")),
            f.rule("row 30", Outside, tcp(f.partner, f.access, 40801, 1030, SYN).build(), 33),
            f.rule("row 59 (UDP 1059)", Outside, udp(f.partner, f.access, 40806, 1059).build(), 62),
            f.rule("the last row (TCP 1060), in the last slot", Outside, tcp(f.partner, f.access, 40802, 1060, SYN).build(), 63),
            f.case("TCP 1060 to internal-edge", Outside, tcp(f.partner, f.internal, 40803, 1060, SYN).build(), DROP_NO_RULE),
            f.case("UDP 1060 (the row is TCP)", Outside, udp(f.partner, f.access, 40804, 1060).build(), DROP_NO_RULE),
            f.case("one past the last row's port", Outside, tcp(f.partner, f.access, 40805, 1061, SYN).build(), DROP_NO_RULE),
        ]
    });
    run(&p, &sets, &cases);
}

/// A port as a one-port range.
struct PortOf(u16);

impl From<PortOf> for edge_filter::rules::PortRange {
    fn from(p: PortOf) -> Self {
        edge_filter::rules::PortRange::single(p.0).unwrap()
    }
}

/// The rows of a running filter change in place: an id keeps its slot (and its hit
/// counter), a new row takes a free slot, and packets judged after the change see
/// only the new table.
#[test]
fn a_new_table_replaces_the_old_one_whole() {
    let sets = edge_sets();
    let old = policy(&spec(&["xmpp-federation"]), &sets);
    let mut h = Harness::with_sets(old, &sets).unwrap_or_else(|e| panic!("{e:#}"));
    h.check_all(&[Case::rule("federation in before", Outside, tcp(PARTNER4, ACCESS4, 40900, 5269, SYN).build(), 0)])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let s = spec_without(&["lync-edge-external"], "federation-out");
    let new = policy(&s, &sets);
    h.filter.maps_mut().set_policy(&new).unwrap();
    let names = h.filter.maps().rule_names().unwrap();
    assert_eq!(names[0].as_deref(), Some("federation-in"), "an id keeps its slot");
    assert_eq!(names[1].as_deref(), Some("crl-out"), "a freed slot goes to a new id");
    assert_eq!(names[2].as_deref(), Some("dns-tcp-out"), "and internal-mtls's, which is gone");
    assert_eq!(h.filter.maps().counters().unwrap().rule_named("federation-in").packets, 1, "its hits stay");
    let stun = names.iter().position(|n| n.as_deref() == Some("stun-udp-in")).unwrap() as u32;
    h.check_all(&[
        Case::rule("federation in after", Outside, tcp(PARTNER4, ACCESS4, 40901, 5269, SYN).build(), 0),
        Case::new("federation out, disabled", Edge, tcp(ACCESS4, PARTNER4, 40902, 5269, SYN).build(), DROP_NO_RULE),
        Case::new("internal MTLS, no longer a row", Outside, tcp(FRONTEND4, INTERNAL4, 40903, 23456, SYN).build(), DROP_NO_RULE),
        Case::rule("STUN in, a new row", Outside, udp(PARTNER4, V4.av, 40904, 3478).build(), stun),
    ])
    .unwrap_or_else(|e| panic!("{e:#}"));
    let back = h.filter.maps().policy().unwrap();
    assert_eq!(back.rules, new.rules, "the kernel's table reads back as written, in its order, whatever the slots");
}
