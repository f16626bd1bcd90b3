//! The XDP program against the vendor table, packet by packet, with BPF_PROG_TEST_RUN
//! on the real object. Each case is a described packet arriving on a NIC of a given
//! role, with the verdict it must get; the harness also checks that exactly that
//! verdict's counter moved on that NIC, by one packet and the frame's bytes, and that
//! only the expected rule's hit counter moved.
//!
//! Privileged: run as root (`cargo xtask test` does).

use std::{net::IpAddr, thread::sleep, time::Duration};

use edge_filter::{AddressSets, Fate, Policy, Prefix, RuleTable, SetId, Timeouts, Variant, rules::TableSpec};
use edge_filter_common::verdict::*;
use edge_filter_tests::{
    Case, Harness,
    Nic::{self, *},
    packet::{self, TPID_8021AD, TPID_8021Q, flags::*, icmp, tcp, udp},
    plan::*,
};

/// The state machine alone: with pickup on, the Edge's segment after its flow is gone
/// records the flow afresh (`pickup.rs`); these tests show that it was gone.
fn tracked_only() -> Policy {
    Policy { pickup: false, ..Policy::default() }
}

fn harness(policy: Policy) -> Harness {
    Harness::new(policy).unwrap_or_else(|e| panic!("{e:#}"))
}

fn run(policy: Policy, cases: &[Case]) {
    check(&harness(policy), cases);
}

fn check(h: &Harness, cases: &[Case]) {
    h.check_all(cases).unwrap_or_else(|e| panic!("{e:#}"));
}

/// R1 as a partner opens it.
fn r1_syn(f: Fam) -> packet::Pkt {
    tcp(f.partner, f.access, 40000, 5269, SYN)
}

#[test]
fn rules_allow_their_tuples_and_nothing_next_to_them() {
    let mut cases = Vec::new();
    for f in [V4, V6] {
        cases.extend([
            f.rule("R1 partner to access-edge:5269", Outside, r1_syn(f).build(), R1),
            f.rule("R1 to an address of an access-edge prefix", Outside, tcp(f.partner, f.access_net, 40000, 5269, SYN).build(), R1),
            f.rule("R1 on a host NIC", Host, r1_syn(f).build(), R1),
            f.rule("R1 continues with data", Outside, tcp(f.partner, f.access, 40000, 5269, ACK | PSH).payload(100).build(), R1),
            f.case("R1 wrong port 5270", Outside, tcp(f.partner, f.access, 40000, 5270, SYN).build(), DROP_NO_RULE),
            f.case("R1 wrong port 22", Outside, tcp(f.partner, f.access, 40000, 22, SYN).build(), DROP_NO_RULE),
            f.case("R1 wrong set: internal-edge:5269", Outside, tcp(f.partner, f.internal, 40000, 5269, SYN).build(), DROP_NO_RULE),
            f.case("R1 wrong role: arrives on an edge NIC", Edge, r1_syn(f).build(), DROP_NO_RULE),
            f.rule("R2 access-edge to partner:5269", Edge, tcp(f.access, f.partner, 40001, 5269, SYN).build(), R2),
            f.rule("R2 from an address of an access-edge prefix", Edge, tcp(f.access_net, f.partner, 40001, 5269, SYN).build(), R2),
            f.case("R2 wrong port 443", Edge, tcp(f.access, f.partner, 40001, 443, SYN).build(), DROP_NO_RULE),
            f.case("R2 wrong set: internal-edge to partner:5269", Edge, tcp(f.internal, f.partner, 40001, 5269, SYN).build(), DROP_NO_RULE),
            f.case("R2 wrong role: arrives on an outside NIC (spoofed)", Outside, tcp(f.access, f.partner, 40001, 5269, SYN).build(), DROP_SPOOFED),
            f.rule("R3 frontend to internal-edge:23456", Outside, tcp(f.frontend, f.internal, 40002, 23456, SYN).build(), R3),
            f.case("R3 wrong port 23457", Outside, tcp(f.frontend, f.internal, 40002, 23457, SYN).build(), DROP_NO_RULE),
            f.case("R3 wrong set: access-edge:23456", Outside, tcp(f.frontend, f.access, 40002, 23456, SYN).build(), DROP_NO_RULE),
            f.case("R3 wrong role: arrives on an edge NIC", Edge, tcp(f.frontend, f.internal, 40002, 23456, SYN).build(), DROP_NO_RULE),
            f.case("UDP to 5269 (the table is TCP)", Outside, udp(f.partner, f.access, 40000, 5269).build(), DROP_NO_RULE),
            f.case("UDP to 23456", Outside, udp(f.frontend, f.internal, 40000, 23456).build(), DROP_NO_RULE),
            f.case("spoofed access-edge source on outside", Outside, tcp(f.access, f.partner, 5269, 40000, SYN_ACK).build(), DROP_SPOOFED),
            f.case("spoofed internal-edge source on host", Host, tcp(f.internal, f.frontend, 23456, 40000, ACK).build(), DROP_SPOOFED),
            f.case("spoofed prefix source on outside", Outside, tcp(f.access_net, f.partner, 40000, 5269, SYN).build(), DROP_SPOOFED),
            f.case("edge NIC, Edge to an unlisted port", Edge, tcp(f.internal, f.frontend, 40000, 443, SYN).build(), DROP_NO_RULE),
            f.case("unpoliced TCP", Outside, tcp(f.partner, f.frontend, 40000, 22, SYN).build(), PASS_UNPOLICED),
            f.case("unpoliced TCP on an edge NIC", Edge, tcp(f.frontend, f.partner, 40000, 22, SYN).build(), PASS_UNPOLICED),
        ]);
        for flags in [SYN, ACK, RST, SYN_ACK, RST_ACK] {
            cases.push(f.case(
                format!("source port 5269 from outside, flags {flags:#04x}, no flow"),
                Outside,
                tcp(f.partner, f.access, 5269, 40000, flags).build(),
                DROP_NO_RULE,
            ));
        }
    }
    run(Policy::default(), &cases);
}

#[test]
fn essentials_pass_and_other_icmp_does_not() {
    let mut cases = vec![Case::new("ARP request for access-edge", Outside, packet::arp([198, 51, 100, 20], [203, 0, 113, 10]), PASS_ESSENTIAL)];
    for f in [V4, V6] {
        cases.extend([
            // ICMP errors are related traffic now: one that quotes no live flow is
            // not essential (`icmp_errors_relate_to_live_flows_only` has the rest).
            f.case(
                "frag needed / packet too big quoting nothing",
                Outside,
                icmp(f.partner, f.access, f.frag_needed.0, f.frag_needed.1).payload(28).build(),
                DROP_NO_RULE,
            ),
            f.case(
                "time exceeded quoting nothing",
                Outside,
                icmp(f.frontend, f.internal, f.time_exceeded.0, f.time_exceeded.1).payload(28).build(),
                DROP_NO_RULE,
            ),
            f.case("echo request to access-edge", Outside, icmp(f.partner, f.access, f.echo, 0).build(), DROP_NO_RULE),
            f.case("echo request, unpoliced", Outside, icmp(f.partner, f.frontend, f.echo, 0).build(), PASS_UNPOLICED),
            f.case("ICMP header cut short", Outside, icmp(f.partner, f.access, f.frag_needed.0, f.frag_needed.1).cut_l4(4).build(), DROP_MALFORMED),
        ]);
    }
    cases.extend([
        Case::new("v6 neighbour solicitation for access-edge", Outside, icmp(PARTNER6, ACCESS6, 135, 0).ttl(255).payload(16).build(), PASS_ESSENTIAL),
        Case::new("v6 neighbour advertisement from the Edge", Edge, icmp(ACCESS6, PARTNER6, 136, 0).ttl(255).payload(16).build(), PASS_ESSENTIAL),
        Case::new(
            "v6 router advertisement to internal-edge",
            Outside,
            icmp(FRONTEND6, INTERNAL6, 134, 0).ttl(255).payload(8).build(),
            PASS_ESSENTIAL,
        ),
        Case::new(
            "v6 neighbour solicitation with hop limit 64 (off-link)",
            Outside,
            icmp(PARTNER6, ACCESS6, 135, 0).ttl(64).payload(16).build(),
            DROP_NO_RULE,
        ),
    ]);
    run(Policy::default(), &cases);
}

#[test]
fn vlan_tags_are_skipped_and_the_inner_packet_judged() {
    let cases = both_families(|f| {
        [
            f.rule("R1 with an 802.1Q tag", Outside, r1_syn(f).tag(TPID_8021Q, 100).build(), R1),
            f.rule("R1 with 802.1ad + 802.1Q tags", Outside, r1_syn(f).tag(TPID_8021AD, 200).tag(TPID_8021Q, 100).build(), R1),
            f.rule("R1 with two 802.1Q tags", Outside, r1_syn(f).tag(TPID_8021Q, 200).tag(TPID_8021Q, 100).build(), R1),
            f.case(
                "two tags, wrong port",
                Outside,
                tcp(f.partner, f.access, 40000, 22, SYN).tag(TPID_8021AD, 200).tag(TPID_8021Q, 100).build(),
                DROP_NO_RULE,
            ),
            f.case(
                "two tags, spoofed",
                Outside,
                tcp(f.access, f.partner, 40000, 5269, SYN).tag(TPID_8021AD, 200).tag(TPID_8021Q, 100).build(),
                DROP_SPOOFED,
            ),
            f.case(
                "three tags: inner packet cannot be judged",
                Outside,
                r1_syn(f).tag(TPID_8021AD, 300).tag(TPID_8021Q, 200).tag(TPID_8021Q, 100).build(),
                DROP_MALFORMED,
            ),
        ]
    });
    run(Policy::default(), &cases);
}

#[test]
fn ipv4_header_length_is_the_real_one() {
    let r1 = r1_syn(V4);
    let opts = vec![1, 1, 1, 1, 0x44, 12, 5, 0, 0, 0, 0, 0];
    let cases = vec![
        Case::rule("IPv4 with 12 bytes of options", Outside, r1.clone().options(opts.clone()).build(), R1),
        Case::rule("IPv4 with 40 bytes of options (IHL 15)", Outside, r1.clone().options(vec![1; 40]).build(), R1),
        Case::new("IPv4 with options, wrong port", Outside, tcp(PARTNER4, ACCESS4, 40000, 22, SYN).options(opts.clone()).build(), DROP_NO_RULE),
        // Port 5269 sits right behind a 20-byte header: read at IHL 8 it is gone.
        Case::new(
            "IPv4 with options, port 5269 where a 20-byte header would end",
            Outside,
            tcp(PARTNER4, ACCESS4, 5269, 5270, SYN).options(opts).build(),
            DROP_NO_RULE,
        ),
        Case::new("IHL 4", Outside, packet::set_byte(r1.build(), 14, 0x44), DROP_MALFORMED),
        Case::new("IHL 0", Outside, packet::set_byte(r1.build(), 14, 0x40), DROP_MALFORMED),
        Case::new("version 6 in an IPv4 frame", Outside, packet::set_byte(r1.build(), 14, 0x65), DROP_MALFORMED),
        Case::new(
            "total length beyond the frame",
            Outside,
            {
                let f = r1.build();
                let n = f.len() - 1;
                packet::truncate(f, n)
            },
            DROP_MALFORMED,
        ),
        Case::new("total length shorter than IHL", Outside, packet::set_byte(packet::set_byte(r1.build(), 16, 0), 17, 19), DROP_MALFORMED),
        Case::rule(
            "Ethernet padding after the IP packet",
            Outside,
            {
                let mut f = r1.build();
                f.extend_from_slice(&[0; 6]);
                f
            },
            R1,
        ),
    ];
    run(Policy::default(), &cases);
}

#[test]
fn ipv6_extension_chain_is_walked_and_bounded() {
    let r1 = r1_syn(V6);
    let mut eight = r1.clone();
    for _ in 0..8 {
        eight = eight.ext(60, 8);
    }
    let nine = eight.clone().ext(60, 8);
    let cases = vec![
        Case::rule("hop-by-hop", Outside, r1.clone().ext(0, 8).build(), R1),
        Case::rule("routing, 24 bytes", Outside, r1.clone().ext(43, 24).build(), R1),
        Case::rule("destination options, 16 bytes", Outside, r1.clone().ext(60, 16).build(), R1),
        Case::rule("hop-by-hop, routing, destination options", Outside, r1.clone().ext(0, 8).ext(43, 24).ext(60, 16).build(), R1),
        Case::rule("atomic fragment (offset 0, no more fragments)", Outside, r1.clone().fragment(0, false).build(), R1),
        Case::new(
            "wrong port behind three headers",
            Outside,
            tcp(PARTNER6, ACCESS6, 40000, 22, SYN).ext(0, 8).ext(43, 24).ext(60, 16).build(),
            DROP_NO_RULE,
        ),
        Case::rule("eight extension headers", Outside, eight.build(), R1),
        Case::new("nine extension headers: too long to walk", Outside, nine.build(), DROP_MALFORMED),
        Case::new(
            "nine extension headers, wrong port: still never passed",
            Outside,
            {
                let mut p = tcp(PARTNER6, ACCESS6, 40000, 22, SYN);
                for _ in 0..9 {
                    p = p.ext(60, 8);
                }
                p.build()
            },
            DROP_MALFORMED,
        ),
        Case::new(
            "payload length beyond the frame",
            Outside,
            {
                let f = r1.clone().ext(0, 8).build();
                let n = f.len() - 1;
                packet::truncate(f, n)
            },
            DROP_MALFORMED,
        ),
        Case::new(
            "extension header longer than the packet",
            Outside,
            // Hop-by-hop length byte says 8 * (1 + 9) bytes; the packet has 8 + 20.
            packet::set_byte(r1.clone().ext(0, 8).build(), 14 + 40 + 1, 9),
            DROP_MALFORMED,
        ),
        Case::new("version 4 in an IPv6 frame", Outside, packet::set_byte(r1.build(), 14, 0x40), DROP_MALFORMED),
    ];
    run(Policy::default(), &cases);
}

fn fragment_cases(fragments: Fate) -> Vec<Case> {
    let pass = fragments == Fate::Pass;
    let mut cases = both_families(|f| {
        let first = r1_syn(f).payload(64).fragment(0, true);
        let later = r1_syn(f).payload(64).fragment(185, false);
        [
            if pass {
                f.rule("first fragment of R1", Outside, first.build(), R1)
            } else {
                f.case("first fragment of R1", Outside, first.build(), DROP_FRAGMENT)
            },
            f.case("non-first fragment to access-edge", Outside, later.build(), if pass { PASS_FRAGMENT } else { DROP_FRAGMENT }),
            f.case(
                "non-first fragment whose payload looks like port 5269",
                Outside,
                tcp(f.partner, f.access, 5269, 5269, SYN).fragment(3, true).build(),
                if pass { PASS_FRAGMENT } else { DROP_FRAGMENT },
            ),
            f.case("first fragment without the whole TCP header", Outside, r1_syn(f).fragment(0, true).cut_l4(8).build(), DROP_FRAGMENT),
            f.case(
                "first fragment to a wrong port",
                Outside,
                tcp(f.partner, f.access, 40000, 22, SYN).fragment(0, true).build(),
                if pass { DROP_NO_RULE } else { DROP_FRAGMENT },
            ),
            f.case(
                "unpoliced fragments follow the unpoliced default",
                Outside,
                tcp(f.partner, f.frontend, 40000, 22, SYN).fragment(185, false).build(),
                PASS_UNPOLICED,
            ),
        ]
    });
    cases.push(Case::new(
        "v6 first fragment whose header chain ends beyond it (RFC 7112)",
        Outside,
        // Fragment header, then a destination-options header that is cut off.
        r1_syn(V6).fragment(0, true).ext(60, 64).cut_l4(0).build(),
        DROP_FRAGMENT,
    ));
    cases
}

#[test]
fn fragments_are_dropped_by_default() {
    run(Policy::default(), &fragment_cases(Fate::Drop));
}

#[test]
fn fragments_pass_when_the_setting_says_so() {
    run(Policy { fragments: Fate::Pass, ..Policy::default() }, &fragment_cases(Fate::Pass));
}

#[test]
fn truncated_at_every_header_is_malformed() {
    let mut cases = Vec::new();
    for f in [V4, V6] {
        let full = r1_syn(f).ext_if_v6(0, 8).tag(TPID_8021Q, 100).build();
        // BPF_PROG_TEST_RUN refuses frames under 14 bytes: 14 is the Ethernet header.
        for len in 14..full.len() {
            cases.push(f.case(format!("R1 cut to {len} of {} bytes", full.len()), Outside, packet::truncate(full.clone(), len), DROP_MALFORMED));
        }
        for cut in [0, 1, 12, 19] {
            cases.push(f.case(
                format!("TCP header of {cut} bytes inside a consistent IP packet"),
                Outside,
                r1_syn(f).cut_l4(cut).build(),
                DROP_MALFORMED,
            ));
        }
        // Data offset 15 (60 bytes) in a 20-byte header.
        let l4 = 14 + if f.tag == "v4" { 20 } else { 40 };
        cases.push(f.case("TCP data offset beyond the packet", Outside, packet::set_byte(r1_syn(f).build(), l4 + 12, 0xf0), DROP_MALFORMED));
        cases.push(f.case("TCP data offset under 5", Outside, packet::set_byte(r1_syn(f).build(), l4 + 12, 0x40), DROP_MALFORMED));
    }
    run(Policy::default(), &cases);
}

trait ExtIfV6 {
    fn ext_if_v6(self, kind: u8, len: usize) -> Self;
}

impl ExtIfV6 for packet::Pkt {
    fn ext_if_v6(self, kind: u8, len: usize) -> Self {
        if self.src.is_ipv6() { self.ext(kind, len) } else { self }
    }
}

#[test]
fn frame_sizes_from_14_bytes_to_jumbo() {
    let cases = vec![
        Case::new("14-byte frame, not IP", Outside, packet::non_ip(14), PASS_UNPOLICED),
        Case::new("14-byte frame, IPv4 EtherType", Outside, packet::truncate(r1_syn(V4).build(), 14), DROP_MALFORMED),
        Case::new("14-byte frame, IPv6 EtherType", Outside, packet::truncate(r1_syn(V6).build(), 14), DROP_MALFORMED),
        Case::new("60-byte minimum frame, not IP", Outside, packet::non_ip(60), PASS_UNPOLICED),
        Case::rule("v4 R1 in a 1514-byte frame", Outside, r1_syn(V4).payload(1514 - 54).build(), R1),
        // Jumbo frames span several buffers; the counters take their whole length.
        Case::rule("v4 R1 in a 9014-byte jumbo frame", Outside, r1_syn(V4).payload(9014 - 54).build(), R1),
        Case::rule("v6 R1 in a 9014-byte jumbo frame", Outside, r1_syn(V6).payload(9014 - 74).build(), R1),
        Case::new(
            "v4 wrong port in a 9014-byte jumbo frame",
            Outside,
            tcp(PARTNER4, ACCESS4, 40000, 22, ACK).payload(9014 - 54).build(),
            DROP_NO_RULE,
        ),
        Case::new(
            "v6 spoofed in a 9014-byte jumbo frame",
            Outside,
            tcp(ACCESS6, PARTNER6, 40000, 5269, ACK).payload(9014 - 74).build(),
            DROP_SPOOFED,
        ),
    ];
    let h = harness(Policy::default());
    assert_eq!(h.filter.program_name(), "edge_filter", "this kernel runs the multi-buffer program");
    h.check_all(&cases).unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn the_single_buffer_program_for_older_kernels_judges_alike() {
    // Everything but jumbo frames, which kernels before 5.18 cannot hand to XDP.
    let mut cases = both_families(|f| {
        let (a, b) = (Conn::r1(f, 40051), Conn::r2(f, 40052));
        [
            a.out("R1 SYN", SYN),
            a.back("R1 SYN-ACK", SYN_ACK, PASS_REPLY),
            b.out("R2 SYN", SYN),
            b.back("R2 SYN-ACK", SYN_ACK, PASS_REPLY),
            b.back("R2 RST", RST, PASS_REPLY),
            b.back("R2 after RST", ACK, DROP_NO_RULE),
            f.rule("R3", Outside, tcp(f.frontend, f.internal, 40053, 23456, SYN).build(), R3),
            f.case("wrong port", Outside, tcp(f.partner, f.access, 40000, 22, SYN).build(), DROP_NO_RULE),
            f.case("spoofed", Outside, tcp(f.access, f.partner, 40000, 5269, SYN).build(), DROP_SPOOFED),
            f.case("fragment", Outside, r1_syn(f).fragment(185, false).build(), DROP_FRAGMENT),
            f.case("malformed", Outside, packet::truncate(r1_syn(f).build(), 30), DROP_MALFORMED),
            f.case("unpoliced", Outside, tcp(f.partner, f.frontend, 1, 2, SYN).build(), PASS_UNPOLICED),
            f.case(
                "frag needed quoting the R1 reply",
                Outside,
                packet::icmp_error(f.partner, f.access, f.frag_needed.0, f.frag_needed.1, &tcp(f.access, f.partner, 5269, 40051, ACK)).build(),
                PASS_RELATED,
            ),
            f.rule("R1 with two tags", Outside, r1_syn(f).tag(TPID_8021AD, 2).tag(TPID_8021Q, 1).build(), R1),
        ]
    });
    cases.push(Case::new("unattached", Unattached, r1_syn(V4).build(), PASS_UNATTACHED));
    let h = Harness::with_variant(Policy::default(), Variant::Linear).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(h.filter.program_name(), "edge_filter_lin");
    h.check_all(&cases).unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn unpoliced_traffic_follows_the_setting() {
    let drop = Policy { unpoliced: Fate::Drop, ..Policy::default() };
    let mut cases = vec![
        Case::new("non-IP frame", Outside, packet::non_ip(60), DROP_UNPOLICED),
        Case::new("ARP still passes", Outside, packet::arp([198, 51, 100, 20], [198, 51, 100, 1]), PASS_ESSENTIAL),
    ];
    for f in [V4, V6] {
        cases.extend([
            f.case("TCP between outside hosts", Outside, tcp(f.partner, f.frontend, 40000, 22, SYN).build(), DROP_UNPOLICED),
            f.case("echo between outside hosts", Outside, icmp(f.partner, f.frontend, f.echo, 0).build(), DROP_UNPOLICED),
            f.case(
                "frag needed between outside hosts still passes",
                Outside,
                icmp(f.partner, f.frontend, f.frag_needed.0, f.frag_needed.1).payload(28).build(),
                PASS_ESSENTIAL,
            ),
            f.rule("R1 still passes", Outside, r1_syn(f).build(), R1),
        ]);
    }
    cases.push(Case::new(
        "v6 neighbour solicitation between outside hosts still passes",
        Outside,
        icmp(PARTNER6, FRONTEND6, 135, 0).ttl(255).payload(16).build(),
        PASS_ESSENTIAL,
    ));
    run(drop, &cases);
}

#[test]
fn dry_run_drops_nothing_and_counts_what_it_would_have() {
    let dry = Policy { dry_run: true, unpoliced: Fate::Drop, ..Policy::default() };
    let off = DRY_RUN_OFFSET;
    let cases = both_families(|f| {
        [
            f.rule("R1", Outside, r1_syn(f).build(), R1),
            f.case("wrong port", Outside, tcp(f.partner, f.access, 40000, 22, SYN).build(), DROP_NO_RULE + off),
            f.case("spoofed", Outside, tcp(f.access, f.partner, 40000, 5269, SYN).build(), DROP_SPOOFED + off),
            f.case("fragment", Outside, r1_syn(f).fragment(185, false).build(), DROP_FRAGMENT + off),
            f.case("unpoliced", Outside, tcp(f.partner, f.frontend, 40000, 22, SYN).build(), DROP_UNPOLICED + off),
            f.case("malformed", Outside, packet::truncate(r1_syn(f).build(), 30), DROP_MALFORMED + off),
        ]
    });
    run(dry, &cases);
}

#[test]
fn a_nic_without_a_role_passes_everything_and_counts_it() {
    let cases = vec![
        Case::new("R1", Unattached, r1_syn(V4).build(), PASS_UNATTACHED),
        Case::new("spoofed", Unattached, tcp(ACCESS6, PARTNER6, 1, 2, SYN).build(), PASS_UNATTACHED),
        Case::new("malformed", Unattached, packet::truncate(r1_syn(V4).build(), 20), PASS_UNATTACHED),
    ];
    run(Policy { unpoliced: Fate::Drop, ..Policy::default() }, &cases);
}

#[test]
fn ports_follow_the_settings() {
    let mut spec = TableSpec::default();
    spec.ports.set("XmppListeningPort", 5270).unwrap();
    spec.ports.set("XmppInternalPort", 5061).unwrap();
    let moved = Policy { rules: RuleTable::build(&spec, &sets()).unwrap(), ..Policy::default() };
    let cases = both_families(|f| {
        [
            f.rule("R1 on the new port", Outside, tcp(f.partner, f.access, 40000, 5270, SYN).build(), R1),
            f.case("R1 on 5269 no longer", Outside, r1_syn(f).build(), DROP_NO_RULE),
            f.rule("R2 on the new port", Edge, tcp(f.access, f.partner, 40000, 5270, SYN).build(), R2),
            f.rule("R3 on the new port", Outside, tcp(f.frontend, f.internal, 40000, 5061, SYN).build(), R3),
            f.case("R3 on 23456 no longer", Outside, tcp(f.frontend, f.internal, 40000, 23456, SYN).build(), DROP_NO_RULE),
        ]
    });
    run(moved, &cases);
}

/// A connection's packets in both directions, as (NIC, packet) for the opener and the
/// responder side.
struct Conn {
    f: Fam,
    opener_nic: Nic,
    responder_nic: Nic,
    client: IpAddr,
    server: IpAddr,
    cport: u16,
    sport: u16,
}

impl Conn {
    fn r1(f: Fam, cport: u16) -> Self {
        Self { f, opener_nic: Outside, responder_nic: Edge, client: f.partner, server: f.access, cport, sport: 5269 }
    }
    fn r2(f: Fam, cport: u16) -> Self {
        Self { f, opener_nic: Edge, responder_nic: Outside, client: f.access, server: f.partner, cport, sport: 5269 }
    }
    fn r3(f: Fam, cport: u16) -> Self {
        Self { f, opener_nic: Outside, responder_nic: Edge, client: f.frontend, server: f.internal, cport, sport: 23456 }
    }
    fn rule_id(&self) -> u32 {
        match (self.opener_nic, self.sport) {
            (Edge, _) => R2,
            (_, 5269) => R1,
            _ => R3,
        }
    }
    /// Opener to responder: allowed by the rule. Sequence numbers are those of a real
    /// handshake: the opener's ISN is 1000, the responder's 5000.
    fn out(&self, what: &str, flags: u8) -> Case {
        let seq = if flags & (SYN | ACK) == SYN { 1000 } else { 1001 };
        self.f.rule(what, self.opener_nic, tcp(self.client, self.server, self.cport, self.sport, flags).seq_ack(seq, 5001).build(), self.rule_id())
    }
    /// Responder to opener, with the verdict it must get.
    fn back(&self, what: &str, flags: u8, verdict: u32) -> Case {
        let seq = if flags & SYN != 0 { 5000 } else { 5001 };
        self.f.case(what, self.responder_nic, tcp(self.server, self.client, self.sport, self.cport, flags).seq_ack(seq, 1001).build(), verdict)
    }
    /// SYN, SYN-ACK, ACK.
    fn handshake(&self) -> [Case; 3] {
        [self.out("SYN", SYN), self.back("SYN-ACK", SYN_ACK, PASS_REPLY), self.out("ACK", ACK)]
    }
}

#[test]
fn replies_of_allowed_flows_pass_and_nothing_else() {
    let cases = both_families(|f| {
        let (r1, r2, r3) = (Conn::r1(f, 40001), Conn::r2(f, 40002), Conn::r3(f, 40003));
        [
            r1.back("R1 reply before any flow", SYN_ACK, DROP_NO_RULE),
            r1.out("R1 SYN", SYN),
            r1.back("R1 SYN-ACK", SYN_ACK, PASS_REPLY),
            r1.out("R1 ACK", ACK),
            r1.back("R1 data back", ACK | PSH, PASS_REPLY),
            r2.back("R2 reply before any flow", SYN_ACK, DROP_NO_RULE),
            r2.out("R2 SYN", SYN),
            r2.back("R2 SYN-ACK from the partner's 5269", SYN_ACK, PASS_REPLY),
            r2.back("R2 data before the handshake completed", ACK | PSH, DROP_NO_RULE),
            r2.out("R2 ACK", ACK),
            r2.back("R2 data from the partner", ACK | PSH, PASS_REPLY),
            r3.out("R3 SYN", SYN),
            r3.back("R3 SYN-ACK", SYN_ACK, PASS_REPLY),
            // The R2 flow's reply arriving from the Edge side is not a reply.
            f.case("R2 reply on the edge NIC", Edge, tcp(f.partner, f.access, 5269, 40002, ACK).build(), DROP_NO_RULE),
            // Another partner from port 5269 to the same Edge port: the flow is not theirs.
            f.case("another host's 5269 to the R2 client port", Outside, tcp(f.frontend, f.access, 5269, 40002, ACK).build(), DROP_NO_RULE),
            f.case("the R2 partner from 5269 to another Edge port", Outside, tcp(f.partner, f.access, 5269, 40099, ACK).build(), DROP_NO_RULE),
            // The R1 reply tuple from the other side of the firewall is spoofed.
            f.case("R1 reply arriving on outside", Outside, tcp(f.access, f.partner, 5269, 40001, ACK).build(), DROP_SPOOFED),
        ]
    });
    run(Policy::default(), &cases);
}

#[test]
fn rst_closes_a_flow_from_either_side() {
    let cases = both_families(|f| {
        let (a, b) = (Conn::r1(f, 40011), Conn::r2(f, 40012));
        [
            a.out("R1 SYN", SYN),
            a.back("R1 SYN-ACK", SYN_ACK, PASS_REPLY),
            a.back("R1 RST from the Edge passes", RST_ACK, PASS_REPLY),
            a.back("R1 after RST", ACK, DROP_NO_RULE),
            b.out("R2 SYN", SYN),
            b.back("R2 SYN-ACK", SYN_ACK, PASS_REPLY),
            b.out("R2 RST from the Edge", RST),
            b.back("R2 after the Edge's RST", ACK, DROP_NO_RULE),
        ]
    });
    run(tracked_only(), &cases);
}

/// Timeouts short enough to wait out, and no pickup: these tests look at the state
/// machine alone, and their last word is the Edge's packet after its flow is gone,
/// which pickup (`pickup.rs`) would record afresh.
fn short(syn: u64, established: u64, closing: u64) -> Policy {
    Policy {
        pickup: false,
        timeouts: Timeouts {
            syn: Duration::from_millis(syn),
            established: Duration::from_millis(established),
            closing: Duration::from_millis(closing),
            udp: Duration::from_millis(established),
        },
        ..Policy::default()
    }
}

#[test]
fn fin_closes_a_flow_after_the_closing_timeout() {
    let h = harness(short(60_000, 60_000, 300));
    let seg = |src, dst, sport, dport, flags, seq, ack| tcp(src, dst, sport, dport, flags).seq_ack(seq, ack).build();
    let conns = |f| (Conn::r1(f, 40021), Conn::r2(f, 40022));
    check(
        &h,
        &both_families(|f| {
            let (a, b) = conns(f);
            [
                a.out("R1 SYN", SYN),
                a.back("R1 SYN-ACK", SYN_ACK, PASS_REPLY),
                // The opener's FIN completes the handshake; the Edge's acknowledgement of
                // it (1002) starts the close.
                a.out("R1 FIN", FIN_ACK),
                f.case("R1 FIN-ACK acknowledging the FIN", Edge, seg(f.access, f.partner, 5269, 40021, FIN_ACK, 5001, 1002), PASS_REPLY),
                b.out("R2 SYN", SYN),
                b.back("R2 SYN-ACK", SYN_ACK, PASS_REPLY),
                b.out("R2 ACK", ACK),
                b.back("R2 FIN from the partner", FIN_ACK, PASS_REPLY),
                f.rule("R2 the Edge acknowledges the FIN", Edge, seg(f.access, f.partner, 40022, 5269, ACK, 1001, 5002), R2),
            ]
        }),
    );
    sleep(Duration::from_millis(600));
    check(
        &h,
        &both_families(|f| {
            let (a, b) = conns(f);
            [a.back("R1 after FIN and the closing timeout", ACK, DROP_NO_RULE), b.back("R2 after FIN and the closing timeout", ACK, DROP_NO_RULE)]
        }),
    );
}

#[test]
fn idle_flows_expire_by_state() {
    // Established flows live 400 ms, unanswered SYNs 100 ms.
    let h = harness(short(100, 400, 60_000));
    let conns = |f| (Conn::r1(f, 40031), Conn::r3(f, 40032));
    check(
        &h,
        &both_families(|f| {
            let (a, b) = conns(f);
            let [syn, syn_ack, ack] = a.handshake();
            [syn, syn_ack, ack, b.out("R3 SYN, never answered", SYN)]
        }),
    );
    sleep(Duration::from_millis(250));
    check(
        &h,
        &both_families(|f| {
            let (a, b) = conns(f);
            [a.back("established flow, idle 250 ms of 400", ACK, PASS_REPLY), b.back("unanswered SYN, idle 250 ms of 100", SYN_ACK, DROP_NO_RULE)]
        }),
    );
    sleep(Duration::from_millis(800));
    check(&h, &both_families(|f| [conns(f).0.back("established flow, idle 800 ms of 400", ACK, DROP_NO_RULE)]));
}

#[test]
fn flows_enter_the_flow_table_only_when_the_handshake_completes() {
    use edge_filter_common::flow_state::*;
    let h = harness(Policy::default());
    let a = Conn::r2(V4, 40041);
    let only = |t: std::collections::BTreeMap<edge_filter::loader::FlowKeyOrd, edge_filter_common::Flow>| {
        assert!(t.len() <= 1, "{t:?}");
        t.into_iter().next()
    };
    h.check_all(&[a.out("R2 SYN", SYN)]).unwrap_or_else(|e| panic!("{e:#}"));
    // The Edge opened it: its handshake is in the table of the trusted side's.
    assert!(h.filter.maps().embryos().unwrap().is_empty());
    let (key, embryo) = only(h.filter.maps().embryos_out().unwrap()).expect("the SYN is recorded as a handshake");
    assert_eq!(&key.0.src[..4], &[203, 0, 113, 10]);
    assert_eq!(&key.0.dst[..4], &[198, 51, 100, 20]);
    assert_eq!((u16::from_be(key.0.sport_be), u16::from_be(key.0.dport_be)), (40041, 5269));
    assert_eq!((u32::from(embryo.rule), embryo.state), (R2, SYN_SENT));
    assert!(h.filter.maps().flows().unwrap().is_empty());

    h.check_all(&[a.back("SYN-ACK", SYN_ACK, PASS_REPLY)]).unwrap_or_else(|e| panic!("{e:#}"));
    let (_, embryo) = only(h.filter.maps().embryos_out().unwrap()).unwrap();
    assert_eq!((embryo.state, embryo.responder.end), (SYN_RECV, 5001));

    // An ACK that does not acknowledge the responder's ISN completes nothing.
    let blind = Case::rule("ACK with a guessed number", Edge, tcp(ACCESS4, PARTNER4, 40041, 5269, ACK).seq_ack(1001, 777).build(), R2);
    h.check_all(&[blind, a.back("data before the handshake completed", ACK | PSH, DROP_NO_RULE)]).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(h.filter.maps().flows().unwrap().is_empty());

    h.check_all(&[a.out("ACK", ACK), a.back("data", ACK | PSH, PASS_REPLY)]).unwrap_or_else(|e| panic!("{e:#}"));
    let (_, flow) = only(h.filter.maps().flows().unwrap()).expect("the completed handshake is a flow");
    assert_eq!((u32::from(flow.rule), flow.state), (R2, ESTABLISHED));
    assert!(h.filter.maps().embryos_out().unwrap().is_empty());
    let ev = h.filter.maps().flow_events().unwrap();
    assert_eq!((ev.flows.created, ev.flows.live, ev.embryos_out.created, ev.embryos_out.closed, ev.embryos_out.evicted), (1, 1, 1, 1, 0));
}

#[test]
fn a_syn_flood_churns_the_handshake_table_and_never_touches_established_flows() {
    // Small tables: 64 flows, 16 handshakes; 10 completed connections, then 2,000
    // spoofed SYNs to the federation port (125 times the handshake table).
    let h = Harness::with_tables(Policy::default(), 64, 16).unwrap_or_else(|e| panic!("{e:#}"));
    let conns: Vec<Conn> = (0..10).map(|i| if i % 2 == 0 { Conn::r1(V4, 41000 + i) } else { Conn::r2(V6, 41000 + i) }).collect();
    for c in &conns {
        h.check_all(&c.handshake()).unwrap_or_else(|e| panic!("{e:#}"));
    }
    for i in 0..2000u32 {
        let src = IpAddr::from([198, 51, 100, 128 + (i % 100) as u8]);
        let frame = tcp(src, ACCESS4, 1024 + (i / 100) as u16 * 7, 5269, SYN).build();
        h.check(&Case::rule(format!("spoofed SYN {i}"), Outside, frame, R1)).unwrap_or_else(|e| panic!("{e:#}"));
    }
    for c in &conns {
        h.check_all(&[c.back("data after the flood", ACK | PSH, PASS_REPLY)]).unwrap_or_else(|e| panic!("{e:#}"));
    }
    let ev = h.filter.maps().flow_events().unwrap();
    assert_eq!((ev.flows.live, ev.flows.evicted, ev.flows.insert_failed), (10, 0, 0), "{ev:?}");
    // R1's handshakes were opened from outside, R2's by the Edge, in a table of their own.
    assert_eq!((ev.embryos.created, ev.embryos_out.created, ev.embryos_out.evicted), (2000 + 5, 5, 0), "{ev:?}");
    assert!(ev.embryos.evicted >= 2000 - 16, "the flood evicted its own kind: {ev:?}");
    assert!(ev.embryos.live <= 16, "{ev:?}");
}

#[test]
fn the_drop_log_is_rate_limited_in_the_kernel_and_counts_what_it_kept_quiet() {
    let cpus = aya::util::nr_cpus().expect("cpus") as u64;
    let h = harness(Policy { drop_log: Some(3), ..Policy::default() });
    let probe = tcp(PARTNER4, ACCESS4, 40000, 22, SYN).build();
    let cases: Vec<Case> = (0..10).map(|i| Case::new(format!("refused probe {i}"), Outside, probe.clone(), DROP_NO_RULE)).collect();
    h.check_all(&cases).unwrap_or_else(|e| panic!("{e:#}"));
    // Passes are never logged.
    h.check_all(&[Case::rule("R1", Outside, r1_syn(V4).build(), R1)]).unwrap_or_else(|e| panic!("{e:#}"));
    let events = h.filter.maps().events().unwrap();
    let (logged, quiet) = (events[edge_filter_common::event::DROP_LOGGED as usize], events[edge_filter_common::event::DROP_LOG_SUPPRESSED as usize]);
    assert_eq!(logged + quiet, 10, "every drop is logged or counted as suppressed");
    assert!((3..=3 * cpus).contains(&logged), "3 lines per second and CPU: {logged} logged, {quiet} suppressed");

    // Off: nothing is logged or counted.
    let h = harness(Policy::default());
    h.check_all(&cases).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(h.filter.maps().events().unwrap()[..2], [0, 0]);
}

#[test]
fn the_kernel_matrix_subset_holds_here_in_both_program_builds() {
    for variant in [Variant::MultiBuffer, Variant::Linear] {
        for (what, policy, cases) in edge_filter_tests::subset::groups() {
            let h = Harness::with_variant(policy, variant).unwrap_or_else(|e| panic!("{e:#}"));
            h.check_all(&cases).unwrap_or_else(|e| panic!("{what} ({variant:?}): {e:#}"));
        }
    }
}

#[test]
fn blind_rst_and_syn_leave_established_flows_alone() {
    // RFC 5961: an RST closes a flow only at the exact sequence number its sender is
    // at; a blind one, or a SYN on the tuple, passes to the endpoint and the flow stays.
    let mut cases = Vec::new();
    for f in [V4, V6] {
        let (a, b) = (Conn::r1(f, 40061), Conn::r2(f, 40062));
        cases.extend(a.handshake());
        cases.extend([
            f.rule("R1 blind RST from the partner's tuple", Outside, tcp(f.partner, f.access, 40061, 5269, RST).seq_ack(77_777, 0).build(), R1),
            f.rule("R1 SYN on the established tuple", Outside, tcp(f.partner, f.access, 40061, 5269, SYN).seq_ack(12_345, 0).build(), R1),
            f.case("R1 blind RST from the Edge's side", Edge, tcp(f.access, f.partner, 5269, 40061, RST).seq_ack(99, 0).build(), PASS_REPLY),
            a.back("R1 data after the blind packets", ACK | PSH, PASS_REPLY),
            a.back("R1 RST at the Edge's sequence number", RST, PASS_REPLY),
            a.back("R1 after the real RST", ACK, DROP_NO_RULE),
        ]);
        cases.extend(b.handshake());
        cases.extend([
            f.case(
                "R2 blind RST from the partner's 5269",
                Outside,
                tcp(f.partner, f.access, 5269, 40062, RST_ACK).seq_ack(31_337, 1001).build(),
                PASS_REPLY,
            ),
            b.back("R2 data after the blind RST", ACK | PSH, PASS_REPLY),
            b.out("R2 RST from the Edge at its sequence number", RST),
            b.back("R2 after the real RST", ACK, DROP_NO_RULE),
        ]);
    }
    run(tracked_only(), &cases);
}

/// An R1 SYN from the partner of `dst`'s family: `want` is the row an access-edge
/// member opens; a stranger's (`None`) is unpoliced.
fn probe(dst: &str, want: Option<u32>) -> Case {
    let ip = dst.parse::<IpAddr>().unwrap();
    let frame = tcp(if ip.is_ipv6() { PARTNER6 } else { PARTNER4 }, ip, 40000, 5269, SYN).build();
    match want {
        Some(r) => Case::rule(format!("R1 to {dst}"), Outside, frame, r),
        None => Case::new(format!("R1 to {dst}"), Outside, frame, PASS_UNPOLICED),
    }
}

/// Write `sets` over the running filter's, then check `cases`; `when` names the step
/// in a failure.
fn set_and_check(h: &mut Harness, sets: &AddressSets, when: &str, cases: &[Case]) {
    h.filter.maps_mut().set_address_sets(sets).unwrap();
    h.check_all(cases).unwrap_or_else(|e| panic!("{when}: {e:#}"));
}

/// The set tables match an address by its longest prefix, whatever lengths the sets
/// hold, and follow changes of those lengths at run time: a length whose last prefix
/// goes stops matching, a new one matches at once.
#[test]
fn address_sets_match_the_longest_prefix_of_every_length_they_hold() {
    let mut sets = sets();
    insert_prefixes(&mut sets, SetId::ACCESS_EDGE, &["198.18.0.0/16", "198.18.4.0/24", "198.18.4.128/28", "198.18.4.130"]);
    insert_prefixes(&mut sets, SetId::ACCESS_EDGE, &["2001:db8:aa::/48", "2001:db8:aa:1::/64", "2001:db8:aa:1::7"]);
    insert_prefixes(&mut sets, SetId::INTERNAL_EDGE, &["2001:db8:bb::/127"]);
    let mut h = Harness::with_sets(Policy::default(), &sets).unwrap_or_else(|e| panic!("{e:#}"));
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    h.check_all(&[
        probe("198.18.200.1", Some(R1)),
        probe("198.18.4.1", Some(R1)),
        probe("198.18.4.129", Some(R1)),
        probe("198.18.4.130", Some(R1)),
        probe("198.19.0.1", None),
        probe("2001:db8:aa:ffff::1", Some(R1)),
        probe("2001:db8:aa:1::7", Some(R1)),
        probe("2001:db8:ab::1", None),
        // In internal-edge: R1's port matches no rule there.
        Case::new("R1 to internal-edge /127", Outside, tcp(PARTNER6, ip("2001:db8:bb::1"), 40000, 5269, SYN).build(), DROP_NO_RULE),
        Case::rule("R3 to internal-edge /127", Outside, tcp(PARTNER6, ip("2001:db8:bb::1"), 40000, 23456, SYN).build(), R3),
    ])
    .unwrap_or_else(|e| panic!("{e:#}"));

    // The /16 goes: its length is no longer looked up; the nested /24 still matches.
    sets.remove(SetId::ACCESS_EDGE, &"198.18.0.0/16".parse().unwrap());
    set_and_check(&mut h, &sets, "without the /16", &[probe("198.18.200.1", None), probe("198.18.4.1", Some(R1))]);
    // A /20 is a new length: it matches at once.
    insert_prefixes(&mut sets, SetId::ACCESS_EDGE, &["198.18.32.0/20"]);
    set_and_check(&mut h, &sets, "with a /20", &[probe("198.18.47.254", Some(R1)), probe("198.18.48.1", None)]);
    assert_eq!(h.filter.maps().address_sets().unwrap(), sets, "the kernel's tables read back as the sets written");
}

/// A family whose sets hold at most `SMALL_SET` prefixes is scanned in place, a
/// larger one probed in the hash table: the same longest-prefix answers on both sides
/// of the line, and while the sets cross it at run time, either way.
#[test]
fn address_sets_answer_alike_scanned_in_place_and_probed_in_the_hash_table() {
    let mut sets = sets();
    insert_prefixes(&mut sets, SetId::ACCESS_EDGE, &["198.18.0.0/16", "198.18.4.0/24", "198.18.4.130", "2001:db8:aa::/48", "2001:db8:aa:1::7"]);
    let mut h = Harness::with_sets(Policy::default(), &sets).unwrap_or_else(|e| panic!("{e:#}"));
    let cases = || {
        vec![
            probe("198.18.200.1", Some(R1)),
            probe("198.18.4.130", Some(R1)),
            probe("198.19.0.1", None),
            probe("2001:db8:aa:ffff::1", Some(R1)),
            probe("2001:db8:aa:1::7", Some(R1)),
            probe("2001:db8:ab::1", None),
            // The plan's internal-edge address, nested nowhere: R1's port is no rule there.
            Case::new("R1 to internal-edge", Outside, tcp(PARTNER4, INTERNAL4, 40000, 5269, SYN).build(), DROP_NO_RULE),
            Case::rule("R3 to internal-edge", Outside, tcp(PARTNER6, INTERNAL6, 40000, 23456, SYN).build(), R3),
        ]
    };
    h.check_all(&cases()).unwrap_or_else(|e| panic!("scanned in place: {e:#}"));
    // Peer-set prefixes nobody sends from: enough to pass the line in both families.
    let peers = sets.add_peer("far").unwrap();
    let fillers: Vec<Prefix> = (1..=edge_filter_common::SMALL_SET as u8)
        .flat_map(|i| [format!("198.18.250.{i}"), format!("2001:db8:ff::{i}")])
        .map(|p| p.parse().unwrap())
        .collect();
    for p in &fillers {
        sets.insert(peers, *p).unwrap();
    }
    set_and_check(&mut h, &sets, "probed in the hash table", &cases());
    // A change on the hash side, then back under the line.
    sets.remove(SetId::ACCESS_EDGE, &"198.18.0.0/16".parse().unwrap());
    set_and_check(&mut h, &sets, "probed, without the /16", &[probe("198.18.200.1", None), probe("198.18.4.1", Some(R1))]);
    for p in &fillers {
        sets.remove(peers, p);
    }
    set_and_check(&mut h, &sets, "scanned again", &[probe("198.18.200.1", None), probe("198.18.4.1", Some(R1)), probe("2001:db8:aa:1::7", Some(R1))]);
    assert_eq!(h.filter.maps().address_sets().unwrap(), sets, "the kernel's tables read back as the sets written");
}

/// `n` addresses that share one bucket of the exact tables (the first bucket to reach
/// `n`), taken in order from `start + i`.
fn sharing_a_bucket<A: Copy>(n: usize, start: u128, addr: impl Fn(u128) -> A, bucket: impl Fn(A) -> u32) -> Vec<A> {
    let mut seen: std::collections::HashMap<u32, Vec<A>> = std::collections::HashMap::new();
    for i in 0.. {
        let a = addr(start + i);
        let members = seen.entry(bucket(a)).or_default();
        members.push(a);
        if members.len() == n {
            return members.clone();
        }
    }
    unreachable!("the search ends when a bucket fills")
}

/// In sets too large to scan, single addresses are found in their bucket of the exact
/// tables without a call; those a full bucket could not take are in the hash table, and
/// cost its probe; an address in no set costs nothing, nor does one that shares a
/// bucket that has no such overflow. Removing either kind works, a way freed takes the
/// next address, and the tables read back as the sets written.
#[test]
fn single_addresses_of_large_sets_are_found_in_their_bucket_without_a_call() {
    use edge_filter_common::{SMALL_SET, exact};
    use edge_filter_tests::emulate::Emulator;
    use std::net::{Ipv4Addr, Ipv6Addr};
    // Six addresses per family in one bucket: four ways, one spilled, one stranger.
    // From 198.18.1.0, past the plan's addresses, within 198.18.0.0/15.
    let v4: Vec<IpAddr> =
        sharing_a_bucket(6, 0xc612_0100, |i| Ipv4Addr::from(i as u32), |a| exact::bucket4(u32::from(a))).into_iter().map(IpAddr::from).collect();
    let v6: Vec<IpAddr> = sharing_a_bucket(6, 0x2001_0db8_00cc_0000_0000_0000_0000_0000, Ipv6Addr::from, |a| {
        let [hi, lo] = exact::halves6(&a.octets());
        exact::bucket6(hi, lo)
    })
    .into_iter()
    .map(IpAddr::from)
    .collect();
    let mut sets = sets();
    for a in v4[..5].iter().chain(&v6[..5]) {
        sets.insert(SetId::ACCESS_EDGE, Prefix::new(*a, if a.is_ipv4() { 32 } else { 128 }).unwrap()).unwrap();
    }
    // Enough single addresses besides to be past the scanned tables in both families.
    let peers = sets.add_peer("far").unwrap();
    for i in 1..=SMALL_SET as u8 {
        insert_prefixes(&mut sets, peers, &[&format!("198.18.250.{i}"), &format!("2001:db8:ff::{i}")]);
    }
    let mut h = Harness::with_sets(Policy::default(), &sets).unwrap_or_else(|e| panic!("{e:#}"));
    let outside = h.nic(Outside).0;
    // The calls of a drop/no_rule probe to `dst` (the set lookup is all it calls).
    let calls = |h: &Harness, dst: IpAddr, want: u32| {
        let frame = tcp(if dst.is_ipv4() { PARTNER4 } else { PARTNER6 }, dst, 40000, 80, SYN).build();
        let mut emulator = Emulator::new(edge_filter::loader::OBJECT, h.filter.program_name(), h.filter.maps()).unwrap_or_else(|e| panic!("{e:#}"));
        let trace = emulator.run(&frame, outside).unwrap_or_else(|e| panic!("{dst}: {e:#}"));
        assert_eq!(trace.action, h.filter.test_run(&frame, outside).unwrap(), "{dst}: the interpreter and the kernel agree");
        assert_eq!(u32::from(trace.action == 1), u32::from(want == DROP_NO_RULE), "{dst}: dropped as no_rule, or passed as unpoliced");
        trace.helper_calls
    };
    // An address beside `a`: the same hint bucket and prefix probes, another exact bucket.
    let near = |a: IpAddr| match a {
        IpAddr::V4(a) => IpAddr::from(Ipv4Addr::from(u32::from(a) ^ 1)),
        IpAddr::V6(a) => IpAddr::from(Ipv6Addr::from(u128::from(a) ^ 1)),
    };
    for family in [&v4, &v6] {
        let members: Vec<u64> = family[..5].iter().map(|a| calls(&h, *a, DROP_NO_RULE)).collect();
        assert_eq!(members.iter().filter(|c| **c == 0).count(), 4, "four members in their bucket's ways, no call: {members:?} {family:?}");
        assert_eq!(members.iter().filter(|c| **c == 1).count(), 1, "one spilled to the hash table, one probe: {members:?}");
        // The stranger in the spilled bucket costs one probe more than one beside it.
        let beside = near(family[5]);
        assert!(!family.contains(&beside));
        assert_eq!(calls(&h, family[5], PASS_UNPOLICED), calls(&h, beside, PASS_UNPOLICED) + 1, "a stranger in the spilled bucket costs its probe");
    }
    for a in ["198.19.0.1", "2001:db8:ab::1"] {
        assert_eq!(calls(&h, a.parse().unwrap(), PASS_UNPOLICED), 0, "{a}: in no set, in a bucket without overflow");
    }
    h.check_all(&v4[..5].iter().chain(&v6[..5]).map(|a| probe(&a.to_string(), Some(R1))).collect::<Vec<_>>())
        .unwrap_or_else(|e| panic!("members: {e:#}"));
    assert_eq!(h.filter.maps().address_sets().unwrap(), sets, "the kernel's tables read back as the sets written");

    // One of the ways and the spilled one go: the bucket no longer sends its strangers
    // to the hash table. Then the stranger comes in, into the freed way.
    let single = |a: IpAddr| Prefix::new(a, if a.is_ipv4() { 32 } else { 128 }).unwrap();
    for family in [&v4, &v6] {
        let spilled = *family[..5].iter().find(|a| calls(&h, **a, DROP_NO_RULE) == 1).unwrap();
        let in_way = *family[..5].iter().find(|a| **a != spilled).unwrap();
        for gone in [spilled, in_way] {
            sets.remove(SetId::ACCESS_EDGE, &single(gone));
        }
        set_and_check(&mut h, &sets, "after the removal", &[probe(&spilled.to_string(), None), probe(&in_way.to_string(), None)]);
        assert_eq!(calls(&h, spilled, PASS_UNPOLICED), calls(&h, near(spilled), PASS_UNPOLICED), "{spilled}: its bucket has nothing spilled now");
        sets.insert(SetId::ACCESS_EDGE, single(family[5])).unwrap();
        set_and_check(&mut h, &sets, "after the newcomer", &[probe(&family[5].to_string(), Some(R1))]);
        assert_eq!(calls(&h, family[5], DROP_NO_RULE), 0, "{}: the newcomer has the freed way", family[5]);
        let stayed: Vec<Case> = family[..5].iter().filter(|a| ![spilled, in_way].contains(a)).map(|a| probe(&a.to_string(), Some(R1))).collect();
        h.check_all(&stayed).unwrap_or_else(|e| panic!("the rest stay: {e:#}"));
    }
    assert_eq!(h.filter.maps().address_sets().unwrap(), sets, "the kernel's tables read back as the sets written");
    // What a scrape reports of the sets, without reading their tables.
    let sizes: Vec<(String, usize)> = sets.sets().map(|s| (sets.name(s).to_owned(), sets.of(s).count())).collect();
    assert_eq!(h.filter.maps().set_sizes().unwrap(), sizes, "each set's size as written");
}

/// A pinned map this version does not use (one an older edge-filter left, of another
/// type) is refused with the way out, not adopted and misread.
#[test]
fn pinned_maps_of_another_layout_are_refused() {
    use edge_filter::{Filter, LoadOptions};
    let dir = edge_filter_tests::bpffs().unwrap().join(edge_filter_tests::topology::unique("pins"));
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    std::fs::create_dir_all(&dir).unwrap();
    // A per-CPU array pinned where edge-filter keeps its configuration (an array of Config).
    let mut loader = aya::EbpfLoader::new();
    loader.map_pin_path("GEN_SEQ", dir.join("CONFIG"));
    let generator = loader.load(edge_filter_tests::programs::TRAFFIC_GEN).unwrap();
    drop(generator);
    assert!(dir.join("CONFIG").exists(), "the stand-in map is pinned");
    let err = Filter::load(&LoadOptions { map_pin_dir: Some(dir.clone()), ..LoadOptions::default() }).err().expect("refused");
    let msg = format!("{err:#}");
    assert!(msg.starts_with(&format!("pinned map {}/CONFIG is not what this edge-filter uses", dir.display())), "{msg}");
    assert!(msg.ends_with("`edge-filter detach` removes the old pins (counters and flows start again)"), "{msg}");
    // Nothing else was pinned beside it.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
}

/// What a verdict costs in calls out of the program (on CPUs with return-thunk
/// mitigations, each costs about as much as the whole floor), counted by the
/// interpreter on the real object against this filter's maps: no drop, ARP or
/// unpoliced verdict makes one; a packet of a live flow makes one, its flow's lookup;
/// a SYN that begins a handshake three (both tables' look-ups, the handshake's
/// insert), a retransmitted one two (it finds its handshake). That is once the CPU has measured its jiffy (the clock is then jiffies, a
/// load); before, a packet that reads the clock also calls `bpf_ktime_get_ns`. No
/// path calls a BPF-to-BPF function. Each action is also the kernel's.
#[test]
fn verdicts_make_only_the_calls_their_state_needs() {
    use edge_filter_tests::emulate::Emulator;
    let h = Harness::new(Policy::default()).unwrap_or_else(|e| panic!("{e:#}"));
    let (outside, edge) = (h.nic(Outside).0, h.nic(Edge).0);
    // An R1 connection, its handshake through the kernel; and a handshake begun.
    let syn = |port| tcp(PARTNER4, ACCESS4, port, 5269, SYN).seq_ack(1000, 0).build();
    for (ifindex, frame) in [
        (outside, syn(40000)),
        (edge, tcp(ACCESS4, PARTNER4, 5269, 40000, SYN_ACK).seq_ack(5000, 1001).build()),
        (outside, tcp(PARTNER4, ACCESS4, 40000, 5269, ACK).seq_ack(1001, 5001).build()),
        (outside, syn(40002)),
    ] {
        h.filter.test_run(&frame, ifindex).unwrap();
    }
    let program = h.filter.program_name();
    let mut emulator = Emulator::new(edge_filter::loader::OBJECT, program, h.filter.maps()).unwrap_or_else(|e| panic!("{e:#}"));
    let access4 = match ACCESS4 {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(_) => unreachable!("ACCESS4 is IPv4"),
    };
    const KTIME_GET_NS: u32 = 5;
    for steady in [false, true] {
        let when = if steady { "measured clock" } else { "fresh clock" };
        // (what, NIC, frame, calls once the jiffy is measured, whether it reads the clock)
        for (what, ifindex, frame, calls, timed) in [
            ("drop/no_rule", outside, tcp(PARTNER4, ACCESS4, 40001, 80, SYN).build(), 0, false),
            ("drop/spoofed", outside, tcp(ACCESS4, PARTNER4, 5269, 40001, SYN).build(), 0, false),
            ("pass/unpoliced", outside, tcp(PARTNER4, FRONTEND4, 40001, 22, SYN).build(), 0, false),
            ("pass/essential (ARP)", outside, packet::arp([198, 51, 100, 20], access4), 0, false),
            (
                "pass/rule, the opener's data",
                outside,
                tcp(PARTNER4, ACCESS4, 40000, 5269, ACK | PSH).seq_ack(1001, 5001).payload(100).build(),
                1,
                true,
            ),
            ("pass/reply", edge, tcp(ACCESS4, PARTNER4, 5269, 40000, ACK | PSH).seq_ack(5001, 1101).payload(100).build(), 1, true),
            // A port of its own each time: the kernel's run records the handshake.
            ("pass/rule, a SYN that begins a handshake", outside, syn(40003 + u16::from(steady)), 3, true),
            ("pass/rule, a retransmitted SYN", outside, syn(40002), 2, true),
        ] {
            emulator.reset();
            if steady {
                emulator.steady_clock().unwrap_or_else(|e| panic!("{e:#}"));
            }
            let trace = emulator.run(&frame, ifindex).unwrap_or_else(|e| panic!("{what}, {when}: {e:#}"));
            let action = h.filter.test_run(&frame, ifindex).unwrap();
            assert_eq!(trace.action, action, "{what}, {when}: the interpreter and the kernel agree");
            assert_eq!(trace.subprog_calls, 0, "{what}, {when}: no BPF-to-BPF call ({program})");
            let clock = u64::from(timed && !steady);
            assert_eq!(trace.helper_calls, calls + clock, "{what}, {when}: helper calls {:?} ({program})", trace.by_helper);
            let reads = trace.by_helper.get(&KTIME_GET_NS).copied().unwrap_or(0);
            assert_eq!(reads, clock, "{what}, {when}: reads of the real clock {:?}", trace.by_helper);
        }
    }
}

/// The time the state tables keep is the monotonic clock userspace judges idle times
/// by, also once the clock costs no call (`clock.rs`): on one CPU for three seconds
/// (long enough to measure a jiffy at any HZ from 100), a live flow's last-seen time
/// lies within a few ticks of `CLOCK_MONOTONIC` read on either side of each packet,
/// and by the end the CPU keeps time by jiffies (its measured jiffy is that of a
/// tick of 1 to 10 ms).
#[test]
fn the_state_tables_keep_the_monotonic_clock_without_calling_it() {
    use edge_filter::report::monotonic_ns;
    // SAFETY: a zeroed set with CPU 0 in it, for this thread only.
    unsafe {
        let mut cpus: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut cpus);
        assert_eq!(libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &cpus), 0, "run on CPU 0");
    }
    let h = harness(Policy::default());
    let (outside, edge) = (h.nic(Outside).0, h.nic(Edge).0);
    for (ifindex, frame) in [
        (outside, tcp(PARTNER4, ACCESS4, 40000, 5269, SYN).seq_ack(1000, 0).build()),
        (edge, tcp(ACCESS4, PARTNER4, 5269, 40000, SYN_ACK).seq_ack(5000, 1001).build()),
        (outside, tcp(PARTNER4, ACCESS4, 40000, 5269, ACK).seq_ack(1001, 5001).build()),
    ] {
        h.filter.test_run(&frame, ifindex).unwrap();
    }
    // A few ticks at HZ 100 (the estimate's bound, `clock.rs`), and some for the VM.
    const SLACK_NS: u64 = 60_000_000;
    let start = std::time::Instant::now();
    let mut seq = 1001;
    let mut checked = 0;
    while start.elapsed() < Duration::from_secs(3) {
        let frame = tcp(PARTNER4, ACCESS4, 40000, 5269, ACK | PSH).seq_ack(seq, 5001).payload(10).build();
        let before = monotonic_ns();
        assert_eq!(h.filter.test_run(&frame, outside).unwrap(), 2, "the opener's data passes");
        let after = monotonic_ns();
        seq += 10;
        let flows = h.filter.maps().flows().unwrap();
        let [(_, flow)] = flows.iter().collect::<Vec<_>>()[..] else { panic!("one flow: {flows:?}") };
        assert!(
            flow.last_seen_ns + SLACK_NS >= before && flow.last_seen_ns <= after + SLACK_NS,
            "after {:?}: last seen at {} ns, the packet went between {before} and {after}",
            start.elapsed(),
            flow.last_seen_ns
        );
        checked += 1;
        sleep(Duration::from_millis(20));
    }
    assert!(checked > 50, "{checked} packets checked");
    // The program's clock map, found through the program: CPU 0's measured jiffy.
    let info = h.filter.program().unwrap().info().unwrap();
    let ids = info.map_ids().unwrap().expect("the kernel lists the program's maps");
    let clock = ids
        .into_iter()
        .map(|id| aya::maps::MapData::from_id(id).unwrap())
        .find(|m| m.info().unwrap().name_as_str() == Some("CLOCK"))
        .expect("the program has a CLOCK map");
    let clock: aya::maps::PerCpuArray<_, [u64; 3]> = aya::maps::PerCpuArray::try_from(aya::maps::Map::PerCpuArray(clock)).unwrap();
    let [_, _, jiffy_ns] = clock.get(&0, 0).unwrap()[0];
    assert!((1_000_000..=10_000_000).contains(&jiffy_ns), "CPU 0 measured a jiffy of {jiffy_ns} ns");
}
