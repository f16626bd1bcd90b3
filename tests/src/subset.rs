//! A representative subset of the dataplane fixtures, at least one case per verdict
//! and reason, each a sequence run on a fresh filter under its policy. The kernel
//! matrix runs it inside every kernel; the privileged suite runs it on the host too,
//! so the subset itself is known to be right.

use edge_filter::{Fate, Policy};
use edge_filter_common::verdict::*;

use crate::{
    Case,
    Nic::*,
    packet::{self, TPID_8021AD, TPID_8021Q, flags::*, icmp, tcp},
    plan::*,
};

/// `(what, policy, cases)`: each group runs on a fresh filter, in order.
pub fn groups() -> Vec<(&'static str, Policy, Vec<Case>)> {
    let r1 = |src, dst| tcp(src, dst, 40000, 5269, SYN);
    let mut default = Vec::new();
    for (t, access, internal, partner, frontend) in [("v4", ACCESS4, INTERNAL4, PARTNER4, FRONTEND4), ("v6", ACCESS6, INTERNAL6, PARTNER6, FRONTEND6)]
    {
        default.extend([
            Case::rule(format!("{t} R1"), Outside, r1(partner, access).build(), R1),
            Case::rule(format!("{t} R1 behind two VLAN tags"), Outside, r1(partner, access).tag(TPID_8021AD, 2).tag(TPID_8021Q, 1).build(), R1),
            Case::rule(format!("{t} R3"), Outside, tcp(frontend, internal, 40001, 23456, SYN).build(), R3),
            // R2 with its whole handshake: the reply passes once the Edge acknowledged.
            Case::rule(format!("{t} R2 SYN"), Edge, tcp(access, partner, 40002, 5269, SYN).seq_ack(1000, 0).build(), R2),
            Case::new(format!("{t} R2 SYN-ACK"), Outside, tcp(partner, access, 5269, 40002, SYN_ACK).seq_ack(5000, 1001).build(), PASS_REPLY),
            Case::rule(format!("{t} R2 ACK"), Edge, tcp(access, partner, 40002, 5269, ACK).seq_ack(1001, 5001).build(), R2),
            Case::new(
                format!("{t} R2 data back"),
                Outside,
                tcp(partner, access, 5269, 40002, ACK | PSH).seq_ack(5001, 1001).payload(50).build(),
                PASS_REPLY,
            ),
            Case::new(format!("{t} port 22"), Outside, tcp(partner, access, 40000, 22, SYN).build(), DROP_NO_RULE),
            Case::new(format!("{t} from 5269, no flow"), Outside, tcp(partner, access, 5269, 40003, ACK).build(), DROP_NO_RULE),
            Case::new(format!("{t} spoofed"), Outside, tcp(access, partner, 5269, 40000, SYN_ACK).build(), DROP_SPOOFED),
            Case::new(format!("{t} truncated"), Outside, packet::truncate(r1(partner, access).build(), 30), DROP_MALFORMED),
            Case::new(format!("{t} later fragment"), Outside, r1(partner, access).payload(64).fragment(185, false).build(), DROP_FRAGMENT),
            Case::new(format!("{t} unpoliced"), Outside, tcp(partner, frontend, 1, 22, SYN).build(), PASS_UNPOLICED),
            Case::new(format!("{t} unattached"), Unattached, r1(partner, access).build(), PASS_UNATTACHED),
        ]);
    }
    default.extend([
        Case::new("ARP", Outside, packet::arp([198, 51, 100, 20], [203, 0, 113, 10]), PASS_ESSENTIAL),
        Case::new("neighbour solicitation", Outside, icmp(PARTNER6, ACCESS6, 135, 0).ttl(255).payload(16).build(), PASS_ESSENTIAL),
        Case::new("fragmentation needed quoting no flow", Outside, icmp(PARTNER4, ACCESS4, 3, 4).payload(28).build(), DROP_NO_RULE),
        Case::rule("IPv6 behind three extension headers", Outside, r1(PARTNER6, ACCESS6).ext(0, 8).ext(43, 24).ext(60, 16).build(), R1),
        Case::new("IPv6 chain of nine", Outside, (0..9).fold(r1(PARTNER6, ACCESS6), |p, _| p.ext(60, 8)).build(), DROP_MALFORMED),
    ]);
    let strict = Policy { unpoliced: Fate::Drop, fragments: Fate::Pass, ..Policy::default() };
    let dry = Policy { dry_run: true, ..Policy::default() };
    vec![
        ("default policy", Policy::default(), default),
        (
            "unpoliced drop, fragments pass",
            strict,
            vec![
                Case::new("unpoliced", Outside, tcp(PARTNER4, FRONTEND4, 1, 22, SYN).build(), DROP_UNPOLICED),
                Case::new("later fragment", Outside, r1(PARTNER4, ACCESS4).payload(64).fragment(185, false).build(), PASS_FRAGMENT),
                Case::rule("first fragment", Outside, r1(PARTNER6, ACCESS6).payload(64).fragment(0, true).build(), R1),
            ],
        ),
        (
            "dry-run",
            dry,
            vec![
                Case::new("port 22", Outside, tcp(PARTNER4, ACCESS4, 40000, 22, SYN).build(), DROP_NO_RULE + DRY_RUN_OFFSET),
                Case::new("spoofed", Outside, tcp(ACCESS6, PARTNER6, 1, 5269, SYN).build(), DROP_SPOOFED + DRY_RUN_OFFSET),
            ],
        ),
    ]
}
