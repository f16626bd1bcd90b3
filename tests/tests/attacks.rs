//! An outsider who knows a connection's 4-tuple (the partner's address and port 5269
//! are public; its ephemeral port is one of 64k guesses) tries to kill or stall it:
//! seven sequences through the real XDP program with BPF_PROG_TEST_RUN, in both
//! families, for flows the Edge accepts from partners (`federation-in`), opens to
//! them (`federation-out`) and accepts from the Front End (`internal-mtls`).
//!
//! Every attack packet matches a row or a flow's tuple, so it passes (the endpoint's
//! own TCP discards it); what each case checks is that the flow is still there
//! afterwards: the next genuine packet of the other side passes as `pass/reply`.
//!
//! Privileged: run as root.

use std::{net::IpAddr, thread::sleep, time::Duration};

use edge_filter::{Policy, Timeouts};
use edge_filter_common::verdict::{DROP_NO_RULE, PASS_REPLY};
use edge_filter_tests::{
    Case, Harness,
    Nic::*,
    conn::{Flow, *},
    packet::{flags::*, tcp},
    plan::*,
};

/// A packet from the outsider, impersonating the flow's side that is not the Edge's,
/// arriving where that side's packets arrive.
fn spoofed(f: &Flow, what: &str, flags: u8, seq: u32, ack: u32) -> Case {
    if f.outsider_is_opener() { f.opener(what, flags, seq, ack, 0) } else { f.responder(what, flags, seq, ack, 0, PASS_REPLY) }
}

/// The state machine alone: with pickup on, the Edge's segment after its flow is gone
/// records the flow afresh (`pickup.rs`); the tests that end on such a segment show
/// that the flow was gone.
fn tracked_only() -> Policy {
    Policy { pickup: false, ..Policy::default() }
}

fn run(policy: Policy, cases: &[Case]) {
    let h = Harness::new(policy).unwrap_or_else(|e| panic!("{e:#}"));
    h.check_all(cases).unwrap_or_else(|e| panic!("{e:#}"));
}

/// Finding 1: ACKs that walk the tracked number 2^30 at a time (each under 2^31
/// ahead), then an RST where the walk ended.
#[test]
fn acks_cannot_walk_a_flow_to_an_rst_the_attacker_chose() {
    let mut cases = Vec::new();
    for f in flows(41000) {
        cases.extend(f.established());
        let base = if f.outsider_is_opener() { 1101u32 } else { 5101 };
        let ack = if f.outsider_is_opener() { 5101 } else { 1101 };
        for k in 1..=6u32 {
            cases.push(spoofed(&f, &format!("walking ACK {k}"), ACK, base.wrapping_add(k << 30), ack));
        }
        cases.push(spoofed(&f, "RST where the walk ended", RST, base.wrapping_add(6 << 30), 0));
        cases.extend(f.still_there());
    }
    run(Policy::default(), &cases);
}

/// Finding 2: the Front End opened `internal-mtls` on one NIC; packets spoofing it
/// on another NIC (the Internet side) do not move the flow, even at the right number.
#[test]
fn packets_on_another_nic_do_not_move_a_flow() {
    let mut cases = Vec::new();
    for v6 in [false, true] {
        let f = Flow::internal_mtls(v6, 41100);
        cases.extend(f.established());
        cases.push(f.opener_on(Host, "RST at the right number, on another NIC", RST | ACK, 1101, 5101, 0));
        cases.push(f.opener_on(Host, "FIN at the right number, on another NIC", FIN | ACK, 1101, 5101, 0));
        cases.extend(f.still_there());
    }
    run(Policy::default(), &cases);
}

/// Finding 3: a FIN at any number (or one the endpoint never accepted) does not cut
/// an established flow's idle timeout to the closing timeout.
#[test]
fn a_blind_fin_does_not_shorten_a_flows_life() {
    let closing = Policy { timeouts: Timeouts { closing: Duration::from_millis(200), ..Policy::default().timeouts }, ..Policy::default() };
    let h = Harness::new(closing).unwrap_or_else(|e| panic!("{e:#}"));
    for f in flows(41200) {
        let mut cases = f.established();
        let (seq, ack) = if f.outsider_is_opener() { (1101, 5101) } else { (5101, 1101) };
        cases.push(spoofed(&f, "blind FIN", FIN | ACK, 0x7fff_0000, ack));
        cases.push(spoofed(&f, "FIN at the right number that the endpoint never saw", FIN | ACK, seq, ack));
        h.check_all(&cases).unwrap_or_else(|e| panic!("{e:#}"));
    }
    sleep(Duration::from_millis(500));
    for f in flows(41200) {
        h.check_all(&f.still_there()).unwrap_or_else(|e| panic!("{} after twice the closing timeout: {e:#}", f.tag));
    }
}

/// Finding 4: an RST at a guessed number during the handshake ends nothing.
#[test]
fn a_blind_rst_does_not_end_a_handshake() {
    let mut cases = Vec::new();
    for f in flows(41300) {
        cases.push(f.opener("SYN", SYN, 1000, 0, 0));
        if f.outsider_is_opener() {
            cases.push(f.responder("SYN-ACK", SYN_ACK, 5000, 1001, 0, PASS_REPLY));
            cases.push(f.opener("blind RST after the SYN-ACK", RST, 0x1234_5678, 0, 0));
            cases.push(f.opener("blind RST-ACK", RST | ACK, 0x2345_6789, 5001, 0));
        } else {
            cases.push(f.responder("blind RST before the SYN-ACK", RST, 0x1234_5678, 0, 0, PASS_REPLY));
            cases.push(f.responder("blind RST-ACK acknowledging a guess", RST | ACK, 0, 0x0bad_f00d, 0, PASS_REPLY));
            cases.push(f.responder("the real SYN-ACK", SYN_ACK, 5000, 1001, 0, PASS_REPLY));
        }
        cases.extend(f.completed("ACK"));
    }
    run(Policy::default(), &cases);
}

/// Finding 5: a SYN with another ISN does not restart a handshake in progress.
#[test]
fn a_spoofed_syn_does_not_restart_a_handshake() {
    let mut cases = Vec::new();
    for v6 in [false, true] {
        for f in [Flow::federation_in(v6, 41400), Flow::internal_mtls(v6, 41402)] {
            cases.extend([
                f.opener("SYN", SYN, 1000, 0, 0),
                f.responder("SYN-ACK", SYN_ACK, 5000, 1001, 0, PASS_REPLY),
                f.opener("spoofed SYN with another ISN", SYN, 0x7777_0000, 0, 0),
            ]);
            cases.extend(f.completed("ACK"));
        }
    }
    run(Policy::default(), &cases);
}

/// Finding 6: a second SYN-ACK with another ISN is not recorded over the real one.
#[test]
fn a_spoofed_syn_ack_does_not_replace_the_real_one() {
    let mut cases = Vec::new();
    for v6 in [false, true] {
        let f = Flow::federation_out(v6, 41500);
        cases.extend([
            f.opener("SYN", SYN, 1000, 0, 0),
            f.responder("the real SYN-ACK", SYN_ACK, 5000, 1001, 0, PASS_REPLY),
            f.responder("a spoofed SYN-ACK with another ISN", SYN_ACK, 0x5eed_0000, 1001, 0, PASS_REPLY),
        ]);
        cases.extend(f.completed("ACK of the real SYN-ACK"));
        // A SYN-ACK that does not acknowledge the SYN is no answer to it.
        let g = Flow::federation_out(v6, 41501);
        cases.extend([
            g.opener("SYN", SYN, 1000, 0, 0),
            g.responder("a SYN-ACK acknowledging a guess", SYN_ACK, 0x5eed_0000, 0x0bad_f00d, 0, PASS_REPLY),
            g.opener("ACK of it", ACK, 1001, 0x5eed_0001, 0),
            g.responder("data of the guess", ACK | PSH, 0x5eed_0001, 1001, 10, DROP_NO_RULE),
            g.responder("the real SYN-ACK", SYN_ACK, 5000, 1001, 0, PASS_REPLY),
        ]);
        cases.extend(g.completed("ACK of the real SYN-ACK"));
    }
    run(Policy::default(), &cases);
}

/// Finding 7 (second part): one ACK 2^31 - 1 ahead does not move the tracked number,
/// so the partner's genuine RST still closes the flow.
#[test]
fn an_ack_far_ahead_does_not_stop_the_genuine_rst() {
    let mut cases = Vec::new();
    for f in flows(41600) {
        cases.extend(f.established());
        let (seq, ack) = if f.outsider_is_opener() { (1101u32, 5101) } else { (5101, 1101) };
        cases.push(spoofed(&f, "ACK 2^31 - 1 ahead", ACK, seq.wrapping_add(0x7fff_ffff), ack));
        cases.push(spoofed(&f, "the genuine RST", RST | ACK, seq, ack));
        // The flow is gone: the Edge's side is answered by nothing.
        if f.outsider_is_opener() {
            cases.push(f.responder("data after the RST", ACK | PSH, 5101, 1101, 10, DROP_NO_RULE));
        } else {
            cases.push(f.opener("data after the RST (still the row's)", ACK | PSH, 1101, 5101, 10));
            cases.push(f.responder("an answer after the RST", ACK, 5101, 1111, 0, DROP_NO_RULE));
        }
    }
    run(tracked_only(), &cases);
}

/// The windows do not get in the way of a connection that moves a lot of data:
/// 64 segments of 1000 bytes each way, with acknowledgements, all move the flow,
/// and the final RST at the right number closes it.
#[test]
fn a_busy_connection_moves_its_flow_all_the_way() {
    let mut cases = Vec::new();
    for f in flows(41700) {
        cases.extend(f.established());
        let (mut o, mut r) = (1101u32, 5101u32);
        for i in 0..64 {
            cases.push(f.opener(&format!("data {i}"), ACK | PSH, o, r, 1000));
            o += 1000;
            cases.push(f.responder(&format!("answer {i}"), ACK | PSH, r, o, 1000, PASS_REPLY));
            r += 1000;
        }
        cases.push(f.opener("RST at the right number", RST | ACK, o, r, 0));
        cases.push(f.responder("after the RST", ACK, r, o, 0, DROP_NO_RULE));
    }
    run(tracked_only(), &cases);
}

/// Two rows' ports on both ends (a partner connecting from port 5269 to the Edge's
/// 5269): the Edge's SYN-ACK also looks like `federation-out`'s opener, yet it is the
/// reply of the handshake the partner started, and the connection is tracked.
#[test]
fn a_connection_between_two_rows_ports_is_tracked_as_the_reply_it_is() {
    let mut cases = Vec::new();
    for v6 in [false, true] {
        let f = Flow::federation_in(v6, 5269);
        cases.extend(f.established());
        cases.extend(f.still_there());
    }
    let h = Harness::new(Policy::default()).unwrap_or_else(|e| panic!("{e:#}"));
    h.check_all(&cases).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(h.filter.maps().flows().unwrap().len(), 2, "one tracked flow per family");
    assert!(h.filter.maps().embryos().unwrap().is_empty());
}

/// Finding 7: completed handshakes from one prefix, ten times the flow table, while
/// an idle federation flow from another prefix is established. The flooding prefix
/// holds its share of the table and no more, so the table never fills and nothing of
/// anyone else's is evicted; the refused handshakes are counted.
#[test]
fn a_completed_handshake_flood_from_one_prefix_evicts_no_other_source() {
    use edge_filter::{LoadOptions, SourceLimit};
    const TABLE: u32 = 256;
    const SHARE: u32 = 32;
    let policy = Policy { sources: SourceLimit { max_flows: SHARE, v4_len: 24, v6_len: 64 }, ..Policy::default() };
    let h = Harness::build(policy, &sets(), LoadOptions { max_flows: TABLE, max_embryos: TABLE, ..LoadOptions::default() })
        .unwrap_or_else(|e| panic!("{e:#}"));
    let legit: Vec<Flow> = vec![Flow::federation_in(false, 42000), Flow::federation_in(true, 42001), Flow::federation_out(true, 42002)];
    for f in &legit {
        h.check_all(&f.established()).unwrap_or_else(|e| panic!("{e:#}"));
    }
    // The attacker's own /64 (another than the partner's 2001:db8:5100::/64), every
    // handshake completed as a real client would, through the program.
    let (out, _) = h.prepare(Outside).unwrap();
    let (edge, _) = h.prepare(Edge).unwrap();
    let flood = 10 * TABLE;
    for i in 0..flood {
        let attacker: IpAddr = format!("2001:db8:5100:1::{:x}", i + 1).parse().unwrap();
        let port = 1024 + (i % 60000) as u16;
        let send = |frame: Vec<u8>, nic| h.send(&frame, nic).unwrap_or_else(|e| panic!("{e:#}"));
        send(tcp(attacker, ACCESS6, port, 5269, SYN).seq_ack(1000, 0).build(), out);
        send(tcp(ACCESS6, attacker, 5269, port, SYN_ACK).seq_ack(5000, 1001).build(), edge);
        send(tcp(attacker, ACCESS6, port, 5269, ACK).seq_ack(1001, 5001).build(), out);
    }
    let ev = h.filter.maps().flow_events().unwrap();
    assert_eq!(ev.flows.evicted, 0, "{ev:?}");
    assert_eq!(ev.source_limited, u64::from(flood - SHARE), "{ev:?}");
    assert_eq!(ev.flows.live, u64::from(SHARE) + legit.len() as u64, "{ev:?}");
    let sources = h.filter.maps().sources().unwrap();
    let mut attacker = [0u8; 16];
    attacker[..8].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0x51, 0x00, 0x00, 0x01]);
    assert_eq!(sources.get(&(attacker, 6)), Some(&u64::from(SHARE)), "{sources:?}");
    for f in &legit {
        h.check_all(&f.still_there()).unwrap_or_else(|e| panic!("{} after the flood: {e:#}", f.tag));
    }
}

/// A spoofed SYN flood from outside, ten times the handshake table, while the Edge's
/// own connection attempts are in progress: they have a table of their own that no
/// outside SYN can evict, so the partners' SYN-ACKs still find them and the
/// connections complete.
#[test]
fn a_syn_flood_from_outside_cannot_evict_the_edges_own_handshakes() {
    use edge_filter::LoadOptions;
    const TABLE: u32 = 64;
    let h =
        Harness::build(Policy::default(), &sets(), LoadOptions { max_embryos: TABLE, ..LoadOptions::default() }).unwrap_or_else(|e| panic!("{e:#}"));
    let outs = [Flow::federation_out(false, 42100), Flow::federation_out(true, 42101)];
    for f in &outs {
        h.check_all(&[f.opener("SYN", SYN, 1000, 0, 0)]).unwrap_or_else(|e| panic!("{e:#}"));
    }
    let (out, _) = h.prepare(Outside).unwrap();
    let flood = 10 * TABLE;
    for i in 0..flood {
        let src: IpAddr = if i % 2 == 0 {
            format!("198.51.100.{}", 100 + i % 100).parse().unwrap()
        } else {
            format!("2001:db8:6666:2::{:x}", i + 1).parse().unwrap()
        };
        let dst = if src.is_ipv4() { ACCESS4 } else { ACCESS6 };
        h.send(&tcp(src, dst, 1024 + i as u16, 5269, SYN).seq_ack(i, 0).build(), out).unwrap_or_else(|e| panic!("{e:#}"));
    }
    for f in &outs {
        let [ack, data] = f.completed("ACK");
        h.check_all(&[f.responder("SYN-ACK after the flood", SYN_ACK, 5000, 1001, 0, PASS_REPLY), ack, data]).unwrap_or_else(|e| panic!("{e:#}"));
    }
    let ev = h.filter.maps().flow_events().unwrap();
    // Each family has a handshake table of TABLE entries, and the flood is half each.
    assert!(ev.embryos.evicted >= u64::from(flood - 2 * TABLE), "the flood churned its own table: {ev:?}");
    assert_eq!(ev.embryos.live, u64::from(2 * TABLE), "both families' tables full of the flood: {ev:?}");
    assert_eq!((ev.embryos_out.created, ev.embryos_out.evicted), (2, 0), "{ev:?}");
}
