//! Pickup: a node of a firewall pair that takes over holds no flow for the
//! connections its peer carried. The Edge's next segment of each (arriving on an
//! `edge` NIC, from an edge set, a row's packet or a row's reply, TCP with ACK and
//! without SYN or RST, or UDP) records the flow, so the partner's side passes again;
//! nothing from an `outside` NIC ever creates state but a row's SYN. Run through the
//! real XDP program with BPF_PROG_TEST_RUN, in both families, for the three rows of
//! the built-in table.
//!
//! Privileged: run as root.

use edge_filter::{Policy, Proto, RuleTable, rules::PortRange, rules::RowSpec, rules::TableSpec};
use edge_filter_common::{
    event, origin,
    verdict::{DROP_NO_RULE, PASS_REPLY},
};
use edge_filter_tests::{
    Case, Harness,
    Nic::*,
    conn::{Flow, flows},
    packet::{flags::*, tcp, udp},
    plan::*,
    row_slot,
};

fn harness(policy: Policy) -> Harness {
    Harness::new(policy).unwrap_or_else(|e| panic!("{e:#}"))
}

fn check(h: &Harness, cases: &[Case]) {
    h.check_all(cases).unwrap_or_else(|e| panic!("{e:#}"));
}

fn events(h: &Harness) -> Vec<u64> {
    h.filter.maps().events().unwrap_or_else(|e| panic!("{e:#}"))
}

/// Entries of the TCP flow table and both handshake tables.
fn tcp_entries(h: &Harness) -> usize {
    let m = h.filter.maps();
    let n = |r: Result<std::collections::BTreeMap<_, _>, _>| r.unwrap_or_else(|e| panic!("{e:#}")).len();
    n(m.flows()) + n(m.embryos()) + n(m.embryos_out())
}

/// Mid-connection, as the peer node left it: the opener is at 1101 and has
/// acknowledged 5101, the responder at 5101 and has acknowledged 1101 (the numbers
/// `Flow::established` ends at). The Edge's side speaks first.
fn edge_speaks_first(f: &Flow) -> Vec<Case> {
    if f.opener_nic == Edge {
        vec![f.opener("the Edge's data, first seen here", ACK | PSH, 1101, 5101, 10)]
    } else {
        vec![f.responder("the Edge's data, first seen here", ACK | PSH, 5101, 1101, 10, PASS_REPLY)]
    }
}

/// The connection carries on both ways after the pickup, and the first segment from
/// the partner's side binds a flow picked up from its reply to the partner's NIC.
fn carries_on(f: &Flow) -> Vec<Case> {
    let (o, r) = if f.opener_nic == Edge { (1111, 5101) } else { (1101, 5111) };
    vec![
        f.opener("the opener's next segment", ACK | PSH, o, r, 10),
        f.responder("the responder's next segment", ACK | PSH, r, o + 10, 10, PASS_REPLY),
        f.opener("the opener's ACK", ACK, o + 10, r + 10, 0),
    ]
}

/// Fixture: the Edge's segment without a flow creates one, whichever side opened the
/// connection; counted as a pickup, listed as picked up, and tracked from then on:
/// the genuine RST at the number the Edge acknowledged ends it.
#[test]
fn the_edges_segment_picks_up_a_connection_this_node_never_saw() {
    let h = harness(Policy::default());
    let fs = flows(42000);
    for f in &fs {
        // Before: the partner's side of the connection is refused (a reply) or passes
        // as its row's packet without creating anything.
        if f.opener_nic == Edge {
            check(&h, &[f.responder("the partner's data before the pickup", ACK | PSH, 5101, 1101, 10, DROP_NO_RULE)]);
        }
        check(&h, &edge_speaks_first(f));
        check(&h, &carries_on(f));
    }
    assert_eq!(events(&h)[event::FLOW_PICKED_UP as usize], fs.len() as u64, "one pickup per connection");
    let flows = h.filter.maps().flows().unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(flows.len(), fs.len(), "{flows:?}");
    assert!(flows.values().all(|f| f.origin == origin::PICKED_UP), "{flows:?}");
    // Tracked: an RST from the partner's side at the number the Edge acknowledged ends
    // the flow, and the Edge's next reply is the partner's no longer... until the
    // Edge speaks again, which is the Edge's to decide.
    for f in &fs {
        let cases = if f.opener_nic == Edge {
            vec![
                f.responder("the partner's RST at the Edge's acknowledgement", RST | ACK, 5111, 1121, 0, PASS_REPLY),
                f.responder("the partner's data after its RST", ACK | PSH, 5111, 1121, 10, DROP_NO_RULE),
            ]
        } else {
            vec![f.opener("the partner's RST at the Edge's acknowledgement", RST | ACK, 1111, 5121, 0)]
        };
        check(&h, &cases);
    }
    assert_eq!(h.filter.maps().flows().unwrap().len(), 0, "every RST at the right number ended its flow");
}

/// Fixture: the same segments from an `outside` NIC create nothing. The partner's
/// side of each connection, mid-stream, any number of times: its replies stay
/// refused, its row's packets pass as they always did, and no table gains an entry.
#[test]
fn the_same_segments_from_outside_pick_up_nothing() {
    let h = harness(Policy::default());
    for f in flows(42100) {
        let partner = if f.opener_nic == Edge {
            f.responder("the partner's data, first seen here", ACK | PSH, 5101, 1101, 10, DROP_NO_RULE)
        } else {
            f.opener("the partner's data, first seen here", ACK | PSH, 1101, 5101, 10)
        };
        check(&h, &[partner.clone(), partner]);
        // The Edge's packets spoofed on the partner's side are spoofed.
        let spoof = tcp(f.responder.0, f.opener.0, f.responder.1, f.opener.1, ACK).seq_ack(5101, 1101).build();
        if f.opener_nic != Edge {
            check(&h, &[Case::new(format!("{} the Edge's address from outside", f.tag), Outside, spoof, edge_filter_common::verdict::DROP_SPOOFED)]);
        }
    }
    assert_eq!(tcp_entries(&h), 0);
    assert_eq!(events(&h)[event::FLOW_PICKED_UP as usize], 0);
}

/// Fixture: a segment of the Edge's that is neither a row's packet nor a row's reply
/// (its source port is no row's, nor is its destination) picks up nothing: it is
/// refused, and so is the answer.
#[test]
fn a_segment_from_a_port_that_is_no_rows_picks_up_nothing() {
    let h = harness(Policy::default());
    for (tag, edge, partner) in [("v4", ACCESS4, PARTNER4), ("v6", ACCESS6, PARTNER6)] {
        check(
            &h,
            &[
                Case::new(
                    format!("{tag} the Edge from 40000 to 40001"),
                    Edge,
                    tcp(edge, partner, 40000, 40001, ACK).seq_ack(1, 1).build(),
                    DROP_NO_RULE,
                ),
                Case::new(format!("{tag} the answer"), Outside, tcp(partner, edge, 40001, 40000, ACK).seq_ack(1, 2).build(), DROP_NO_RULE),
            ],
        );
    }
    assert_eq!(tcp_entries(&h), 0);
}

/// `state.pickup = false`: the Edge's segments pass as their rows allow and record
/// nothing, so the connections a peer carried stay refused.
#[test]
fn with_pickup_off_nothing_is_picked_up() {
    let h = harness(Policy { pickup: false, ..Policy::default() });
    for f in flows(42200) {
        let cases = if f.opener_nic == Edge {
            vec![f.opener("the Edge's data", ACK | PSH, 1101, 5101, 10), f.responder("the partner's answer", ACK | PSH, 5101, 1111, 10, DROP_NO_RULE)]
        } else {
            vec![f.responder("the Edge's data", ACK | PSH, 5101, 1101, 10, DROP_NO_RULE)]
        };
        check(&h, &cases);
    }
    assert_eq!(tcp_entries(&h), 0);
}

/// A handshake is not picked up: a SYN-ACK or an RST from the Edge without a
/// handshake creates nothing (the partner's SYN, retransmitted, opens one here).
#[test]
fn syn_acks_and_rsts_from_the_edge_pick_up_nothing() {
    let h = harness(Policy::default());
    for f in flows(42300).into_iter().filter(|f| f.opener_nic != Edge) {
        check(
            &h,
            &[
                f.responder("a SYN-ACK with no handshake here", SYN_ACK, 5000, 1001, 0, DROP_NO_RULE),
                f.responder("an RST with no flow here", RST | ACK, 5101, 1101, 0, DROP_NO_RULE),
            ],
        );
    }
    assert_eq!(tcp_entries(&h), 0);
}

/// A picked-up flow's windows are as wide as TCP allows (the scale was in SYNs this
/// node never saw), so the partner's side is held to less: its RST ends the flow only
/// at the number the Edge acknowledged. An outsider who moves the partner's side with
/// a segment far ahead, then sends an RST where it ended, ends nothing; neither does
/// an RST inside the window, which the Edge's next segment undoes.
#[test]
fn an_outsider_cannot_end_a_picked_up_flow_at_a_number_of_its_choosing() {
    let h = harness(Policy::default());
    for f in flows(42400) {
        check(&h, &edge_speaks_first(&f));
        // The partner's side: as the peer left it, it is at `seq` and the Edge has
        // sent up to `ack`.
        let (seq, ack) = if f.opener_nic == Edge { (5101u32, 1111u32) } else { (1101, 5111) };
        let far = seq.wrapping_add(1 << 29);
        let spoof = |what: &str, flags, s: u32| {
            if f.opener_nic == Edge { f.responder(what, flags, s, ack, 0, PASS_REPLY) } else { f.opener(what, flags, s, ack, 0) }
        };
        check(
            &h,
            &[
                spoof("a segment 2^29 ahead", ACK | PSH, far),
                spoof("an RST where it ended", RST | ACK, far),
                spoof("an RST inside the window", RST, seq.wrapping_add(1 << 20)),
            ],
        );
        check(&h, &carries_on(&f));
    }
    assert_eq!(h.filter.maps().flows().unwrap().len(), 6, "every picked-up flow is still there");
    // And still the flows of the first pickup: none was ended and picked up again.
    assert_eq!(events(&h)[event::FLOW_PICKED_UP as usize], 6);
}

/// A flood of spoofed ACKs and SYN-ACKs from outside, at every port of the rows, from
/// 5269 and to it, against a node that holds no flow (a standby): nothing is created,
/// and none of it passes but what a row's packet is anyway.
#[test]
fn a_flood_of_spoofed_acks_and_syn_acks_from_outside_creates_no_flow_on_a_standby() {
    let h = harness(Policy::default());
    let mut cases = Vec::new();
    for i in 0..2000u32 {
        let (partner, access, internal) = if i % 2 == 0 { (PARTNER4, ACCESS4, INTERNAL4) } else { (PARTNER6, ACCESS6, INTERNAL6) };
        let port = 20000 + (i % 40000) as u16;
        let (seq, ack) = (i.wrapping_mul(2_654_435_761), i.wrapping_mul(40_503));
        let flags = if i % 3 == 0 { SYN_ACK } else { ACK | PSH };
        // Shaped as the partner's reply of federation-out: refused.
        cases.push(Case::new(format!("reply-shaped {i}"), Outside, tcp(partner, access, 5269, port, flags).seq_ack(seq, ack).build(), DROP_NO_RULE));
        // Shaped as a row's packet (federation-in, internal-mtls): the row passes it,
        // and only a SYN would open anything.
        let (dst, dport, row) = if i % 4 < 2 { (access, 5269, R1) } else { (internal, 23456, R3) };
        cases.push(Case::rule(format!("row-shaped {i}"), Outside, tcp(partner, dst, port, dport, flags).seq_ack(seq, ack).build(), row));
    }
    check(&h, &cases);
    assert_eq!(tcp_entries(&h), 0, "the flood created state");
    let ev = events(&h);
    assert_eq!((ev[event::FLOW_PICKED_UP as usize], ev[event::FLOW_CREATED as usize]), (0, 0));
}

/// UDP flows are picked up the same way: the Edge's answer from a row's port, to a
/// partner whose datagram went through the peer node, records the flow; the same
/// datagram from outside does not; with pickup off the answer is refused.
#[test]
fn udp_flows_are_picked_up_from_the_edges_answer() {
    let spec = TableSpec {
        rows: vec![RowSpec {
            id: "stun-in".into(),
            proto: Proto::Udp,
            ports: PortRange::single(3478).unwrap(),
            source: "any".into(),
            destination: "access-edge".into(),
        }],
        ..TableSpec::default()
    };
    let rules = RuleTable::build(&spec, &sets()).unwrap_or_else(|e| panic!("{e}"));
    for pickup in [true, false] {
        let h_policy = Policy { rules: rules.clone(), pickup, ..Policy::default() };
        let h = harness(h_policy.clone());
        for (tag, edge, partner) in [("v4", ACCESS4, PARTNER4), ("v6", ACCESS6, PARTNER6)] {
            let answer = udp(edge, partner, 3478, 40000).payload(20).build();
            let spoof = udp(partner, edge, 40001, 3478).payload(20).build();
            let reply_shaped = udp(partner, edge, 3478, 40002).payload(20).build();
            check(
                &h,
                &[
                    Case::new(format!("{tag} a datagram shaped as an answer, from outside"), Outside, reply_shaped, DROP_NO_RULE),
                    Case::new(format!("{tag} the Edge's answer"), Edge, answer.clone(), if pickup { PASS_REPLY } else { DROP_NO_RULE }),
                    Case::new(format!("{tag} and again"), Edge, answer, if pickup { PASS_REPLY } else { DROP_NO_RULE }),
                    Case::rule(format!("{tag} the row's datagram from outside"), Outside, spoof, row_slot(&h_policy, "stun-in")),
                ],
            );
        }
        let udp_flows = h.filter.maps().udp_flows().unwrap();
        let picked = udp_flows.values().filter(|f| f.origin == origin::PICKED_UP).count();
        assert_eq!((picked, events(&h)[event::UDP_PICKED_UP as usize]), if pickup { (2, 2) } else { (0, 0) }, "pickup {pickup}: {udp_flows:?}");
        assert_eq!(udp_flows.len(), picked + 2, "and the two flows the row's datagrams opened");
    }
}
