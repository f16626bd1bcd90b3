//! The policy: the vendor's XMPP federation table, judged packet by packet.
//!
//! | rule | opens from NIC role | TCP dst port | source | destination |
//! |---|---|---|---|---|
//! | R1 `federation-in`  | outside, host | federation (5269) | any | access-edge |
//! | R2 `federation-out` | edge          | federation (5269) | access-edge | any |
//! | R3 `internal-mtls`  | outside, host | internal (23456)  | any | internal-edge |
//!
//! A packet is *policed* when its source or destination is in an edge set. The order
//! of judgement, each step final:
//!
//! 1. NIC without a role: `pass/unattached`.
//! 2. Cannot be parsed: `drop/malformed` (an IPv6 first fragment without its whole
//!    header chain: `drop/fragment`). ARP: `pass/essential`. Not IP: unpoliced.
//! 3. Source in an edge set on an `outside` or `host` NIC: `drop/spoofed`.
//! 4. Unpoliced: `pass/unpoliced`, or under `unpoliced = drop` the essentials of 6
//!    pass and the rest is `drop/unpoliced`.
//! 5. Policed fragment: `drop/fragment` (`pass/fragment` under `fragments = pass`,
//!    where a first fragment goes on to be judged by its header).
//! 6. ICMP destination unreachable (fragmentation needed included), time exceeded and
//!    parameter problem; ICMPv6 errors 1-4; ICMPv6 router and neighbour discovery with
//!    hop limit 255 (RFC 4861 §6.1.1, §7.1.1, so never from off-link): `pass/essential`.
//! 7. TCP matching R1, R2 or R3: `pass/rule`; the flow is recorded.
//! 8. TCP that is the reply of a recorded flow: `pass/reply`. A source port of 5269
//!    opens nothing: that is how a reply looks, and only a recorded flow makes it one.
//!    A reply's source port is the port its flow was opened to (5269 or 23456).
//! 9. Everything else policed: `drop/no_rule`. Before 6, a policed packet whose
//!    TCP, UDP or ICMP header is cut short is `drop/malformed` (`drop/fragment` for a
//!    first fragment).
//!
//! Dry-run is applied by the caller: it turns any drop into `would_drop/<reason>`.

use aya_ebpf::programs::XdpContext;
use edge_filter_common::{Settings, family, flags, role, rule, set, verdict};

use crate::{
    counters, droplog,
    maps::IFACES,
    parse::{
        self, FRAG_FIRST, FRAG_LATER, FRAG_NONE, Frame, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
        L4_WHOLE, Packet, Parsed,
    },
    sets::sets_of,
    state,
};

/// Counter slot of NICs that have no role.
const UNATTACHED_SLOT: u32 = 0;

/// The verdict for this packet and the counter slot of its NIC; `bytes` is the
/// frame's whole length, for the rule counters.
#[inline(always)]
pub fn judge(ctx: &XdpContext, frame: &Frame, settings: &Settings, bytes: u64) -> (u32, u32) {
    let ifindex = ctx.ingress_ifindex() as u32;
    let iface = IFACES.get(ifindex).copied().unwrap_or_default();
    if iface.role == 0 {
        return (UNATTACHED_SLOT, verdict::PASS_UNATTACHED);
    }
    let v = match parse::parse(frame) {
        Ok(Parsed::Ip(p)) => {
            let v = judge_ip(&p, iface.role, settings, bytes);
            if verdict::is_drop(v) {
                droplog::remember(settings, Some(&p));
            }
            v
        }
        other => {
            let v = match other {
                Ok(Parsed::Arp) => verdict::PASS_ESSENTIAL,
                Ok(Parsed::Other) => unpoliced(settings),
                Ok(Parsed::IncompleteFirstFragment) => verdict::DROP_FRAGMENT,
                Err(parse::Malformed) | Ok(Parsed::Ip(_)) => verdict::DROP_MALFORMED,
            };
            if verdict::is_drop(v) {
                droplog::remember(settings, None);
            }
            v
        }
    };
    (iface.slot, v)
}

#[inline(always)]
fn unpoliced(settings: &Settings) -> u32 {
    if settings.flags & flags::UNPOLICED_DROP != 0 {
        verdict::DROP_UNPOLICED
    } else {
        verdict::PASS_UNPOLICED
    }
}

#[inline(always)]
fn judge_ip(p: &Packet, nic_role: u32, settings: &Settings, bytes: u64) -> u32 {
    let src_sets = sets_of(p.family, &p.src);
    if nic_role != role::EDGE && src_sets != 0 {
        return verdict::DROP_SPOOFED;
    }
    let dst_sets = sets_of(p.family, &p.dst);
    if src_sets | dst_sets == 0 {
        return if settings.flags & flags::UNPOLICED_DROP != 0 && essential(p) {
            verdict::PASS_ESSENTIAL
        } else {
            unpoliced(settings)
        };
    }
    if p.frag != FRAG_NONE {
        if settings.flags & flags::FRAGMENTS_PASS == 0 {
            return verdict::DROP_FRAGMENT;
        }
        if p.frag == FRAG_LATER {
            return verdict::PASS_FRAGMENT;
        }
    }
    if p.l4 != L4_WHOLE {
        // A first fragment too short for its header is RFC 1858's tiny fragment.
        return if p.frag == FRAG_FIRST { verdict::DROP_FRAGMENT } else { verdict::DROP_MALFORMED };
    }
    if essential(p) {
        return verdict::PASS_ESSENTIAL;
    }
    if p.proto != IPPROTO_TCP {
        return verdict::DROP_NO_RULE;
    }
    let matched = match nic_role {
        role::OUTSIDE | role::HOST => {
            if dst_sets & set::ACCESS_EDGE != 0 && p.dport_be == settings.federation_port_be {
                rule::FEDERATION_IN
            } else if dst_sets & set::INTERNAL_EDGE != 0 && p.dport_be == settings.internal_port_be {
                rule::INTERNAL_MTLS
            } else {
                NO_RULE
            }
        }
        role::EDGE if src_sets & set::ACCESS_EDGE != 0 && p.dport_be == settings.federation_port_be => {
            rule::FEDERATION_OUT
        }
        _ => NO_RULE,
    };
    // A reply comes from the port its flow was opened to, which a rule named: from
    // any other port, no flow need be looked for. (Flows of a port the settings no
    // longer name are dead already: their opener's packets match no rule.)
    if matched == NO_RULE && p.sport_be != settings.federation_port_be && p.sport_be != settings.internal_port_be {
        return verdict::DROP_NO_RULE;
    }
    tracked(p, nic_role, settings, matched, bytes)
}

/// `matched` of a packet no rule allows.
const NO_RULE: u32 = u32::MAX;

/// A TCP packet that `matched` a rule (opens or continues its flow: `pass/rule`), or
/// none (`NO_RULE`: `pass/reply` if it is the reply of a live flow, else
/// `drop/no_rule`). Moves the flow's state along.
///
/// Verifier: a BPF-to-BPF call, so that the state tables' keys and entries and the
/// drop log's record are on sibling stack frames under the entry point; in one frame
/// they pass the 512-byte stack limit (544 bytes on 5.10 and 6.1, as the kernel
/// matrix showed). Only packets that need the state tables pay for the call.
#[inline(never)]
fn tracked(p: &Packet, nic_role: u32, settings: &Settings, matched: u32, bytes: u64) -> u32 {
    let mut clock = state::Clock::new();
    if matched != NO_RULE {
        // Replies to R2 come from partners (outside, or a host NIC in host mode);
        // replies to R1 and R3 come from the Edge.
        let reply_roles = if matched == rule::FEDERATION_OUT {
            role::bit(role::OUTSIDE) | role::bit(role::HOST)
        } else {
            role::bit(role::EDGE)
        };
        state::open(p, matched, reply_roles, settings, &mut clock);
        counters::count_rule(matched, bytes);
        return verdict::PASS_RULE;
    }
    if state::reply(p, nic_role, settings, &mut clock) {
        return verdict::PASS_REPLY;
    }
    verdict::DROP_NO_RULE
}

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETERPROB: u8 = 12;
/// ICMPv6 errors: destination unreachable, packet too big, time exceeded, parameter
/// problem.
const ICMPV6_ERRORS: core::ops::RangeInclusive<u8> = 1..=4;
/// ICMPv6 router solicitation, advertisement, neighbour solicitation, advertisement,
/// redirect.
const ICMPV6_ND: core::ops::RangeInclusive<u8> = 133..=137;
const ND_HOP_LIMIT: u8 = 255;

/// Traffic the host cannot live without. Needs a whole ICMP header, so a fragment
/// other than the first never qualifies.
#[inline(always)]
fn essential(p: &Packet) -> bool {
    if p.l4 != L4_WHOLE {
        return false;
    }
    if p.family == family::V4 {
        p.proto == IPPROTO_ICMP
            && matches!(p.icmp_type, ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETERPROB)
    } else {
        p.proto == IPPROTO_ICMPV6
            && (ICMPV6_ERRORS.contains(&p.icmp_type)
                || (ICMPV6_ND.contains(&p.icmp_type) && p.hop_limit == ND_HOP_LIMIT))
    }
}
