//! The policy: the rule table (rows of protocol, port or range, source, destination),
//! judged packet by packet.
//!
//! A row whose source is an edge set opens flows from `edge` NICs, and its replies
//! arrive on `outside` and `host` NICs; every other row opens from `outside` and
//! `host` NICs, and its replies come from `edge` NICs. The built-in table is the
//! vendor's XMPP federation table:
//!
//! | row | proto | port | source | destination |
//! |---|---|---|---|---|
//! | `federation-in`  | tcp | 5269  | any | access-edge |
//! | `federation-out` | tcp | 5269  | access-edge | any |
//! | `internal-mtls`  | tcp | 23456 | any | internal-edge |
//!
//! A packet is *policed* when its source or destination is in an edge set (peer sets
//! only match), and on a `host` NIC also when it is addressed to the machine on its
//! link only: a broadcast or multicast frame, a link-local destination (unless
//! `host-link-local = pass`). The order of judgement, each step final:
//!
//! 1. NIC without a role: `pass/unattached`.
//! 2. Cannot be parsed: `drop/malformed` (an IPv6 first fragment without its whole
//!    header chain: `drop/fragment`). ARP: `pass/essential`. Not IP: unpoliced.
//! 3. Source in an edge set on an `outside` or `host` NIC: `drop/spoofed`.
//! 4. Unpoliced: `pass/unpoliced`, or under `unpoliced = drop` ARP, neighbour
//!    discovery and ICMP errors pass (`pass/essential`) and the rest is
//!    `drop/unpoliced`.
//! 5. Policed fragment: `drop/fragment` (`pass/fragment` under `fragments = pass`,
//!    where a first fragment goes on to be judged by its header).
//! 6. Policed and cut short (TCP, UDP or ICMP header): `drop/malformed`
//!    (`drop/fragment` for a first fragment).
//! 7. ICMPv6 router and neighbour discovery with hop limit 255 (RFC 4861 §6.1.1,
//!    §7.1.1, so never from off-link), and on a `host` NIC under `host-dhcp` a DHCP
//!    server's answer (UDP 67 to 68, 547 to 546): `pass/essential`. An ICMP or ICMPv6 error whose
//!    quoted packet belongs to a live flow, in either direction: `pass/related`
//!    (conntrack's RELATED); any other error: `drop/no_rule`.
//! 8. TCP or UDP that is the reply of a live flow, from a port of a row it could be
//!    the reply of, on a NIC of the flow's reply roles: `pass/reply`. A source port of
//!    5269 opens nothing: that is how a reply looks, and only a recorded flow makes it
//!    one, or on an `edge` NIC a pickup: the Edge's reply (TCP with ACK, without SYN
//!    or RST; UDP) for which this node holds no flow records one (`pass/reply`), so
//!    a firewall pair fails over without losing a connection (`state.rs`).
//! 9. TCP or UDP that opens a row: `pass/rule`; the flow is opened or moved along.
//! 10. Everything else policed: `drop/no_rule`.
//!
//! Dry-run is applied by the caller: it turns any drop into `would_drop/<reason>`.

use aya_ebpf::programs::XdpContext;
use edge_filter_common::{Config, Iface, MAX_IFINDEX, Settings, family, flags, ipproto, role, set, verdict};

use crate::{
    counters, droplog,
    parse::{self, FRAG_FIRST, FRAG_LATER, FRAG_NONE, Frame, L4_WHOLE, Packet, Parsed},
    rules,
    sets::sets_of,
    state,
};

/// Counter slot of NICs that have no role.
const UNATTACHED_SLOT: u32 = 0;

/// The verdict for this packet and the counter slot of its NIC; the rule counters
/// count `frame`'s length as the parse leaves it known.
#[inline(always)]
pub(crate) fn judge(ctx: &XdpContext, frame: &Frame, config: &Config) -> (u32, u32) {
    let settings = &config.settings;
    let ifindex = ctx.ingress_ifindex() as u32;
    let iface = iface(config, ifindex);
    if iface.role == 0 {
        return (UNATTACHED_SLOT, verdict::PASS_UNATTACHED);
    }
    let Some(p) = Packet::scratch(parse::XDP_SLOT) else {
        return (iface.slot, verdict::PASS_UNATTACHED);
    };
    let (v, ip) = match parse::parse(frame, p) {
        Ok(Parsed::Ip) => (judge_ip(p, iface.role, ifindex, config, frame.len() as u64), true),
        Ok(Parsed::Arp) => (verdict::PASS_ESSENTIAL, false),
        Ok(Parsed::Other) => (unpoliced(settings), false),
        Ok(Parsed::IncompleteFirstFragment) => (verdict::DROP_FRAGMENT, false),
        Err(parse::Malformed) => (verdict::DROP_MALFORMED, false),
    };
    if verdict::is_drop(v) {
        // The drop log reports the packet's tuple when it got as far as an IP header.
        droplog::remember(settings, if ip { Some(&*p) } else { None });
    }
    (iface.slot, v)
}

/// The NIC's entry (role 0: not served). The index is masked after the comparison, and
/// the mask kept by `black_box` (LLVM would drop it as implied): the verifiers of 5.10
/// and 6.1 lose the comparison's bound when the index is spilled between the two, as
/// LLVM may do, and never a mask's.
#[inline(always)]
fn iface(config: &Config, ifindex: u32) -> Iface {
    if ifindex >= MAX_IFINDEX {
        return Iface::default();
    }
    config.ifaces[(core::hint::black_box(ifindex) & (MAX_IFINDEX - 1)) as usize]
}

#[inline(always)]
fn unpoliced(settings: &Settings) -> u32 {
    if settings.flags & flags::UNPOLICED_DROP != 0 { verdict::DROP_UNPOLICED } else { verdict::PASS_UNPOLICED }
}

#[inline(always)]
fn judge_ip(p: &Packet, nic_role: u32, ifindex: u32, config: &Config, bytes: u64) -> u32 {
    let settings = &config.settings;
    let lens = config.lens();
    let src_sets = sets_of(lens, p.family, &p.src);
    if nic_role != role::EDGE && src_sets & set::EDGE_BITS != 0 {
        return verdict::DROP_SPOOFED;
    }
    let dst_sets = sets_of(lens, p.family, &p.dst);
    // On a host NIC, what is addressed to the machine on its link is its own as much
    // as its edge addresses are.
    let local = nic_role == role::HOST && settings.flags & flags::HOST_LINK_PASS == 0 && link_scoped(p);
    if (src_sets | dst_sets) & set::EDGE_BITS == 0 && !local {
        return if settings.flags & flags::UNPOLICED_DROP != 0 && (essential(p, nic_role, settings) || icmp_error(p)) {
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
    if essential(p, nic_role, settings) {
        return verdict::PASS_ESSENTIAL;
    }
    if p.inner != 0 {
        return tracked(p, nic_role, ifindex, RELATED, 0, bytes, settings);
    }
    let rows = rules::rows(settings, p.proto, p.sport_be, p.dport_be, src_sets, dst_sets, nic_role);
    // A reply comes from the port its flow was opened to, which a row named: only a
    // packet that could be the reply of some row looks for a flow. (Flows of a row
    // the table no longer has are dead already: their opener's packets match nothing.)
    let mut what = if rows.reply != 0 { ANSWERS } else { 0 };
    if rows.open != 0 {
        what |= OPENS | rules::first(rows.open);
    }
    if what == 0 {
        return verdict::DROP_NO_RULE;
    }
    tracked(p, nic_role, ifindex, what, rows.reply, bytes, settings)
}

/// Bits of `what` for [`tracked`]: the packet opens a row (its slot in the low byte).
const OPENS: u32 = 1 << 8;
/// The packet could be the reply of a row's flow.
const ANSWERS: u32 = 1 << 9;
/// An ICMP error, judged by the flow its quote belongs to.
const RELATED: u32 = 1 << 10;

/// A packet that may be the reply of a live flow (`ANSWERS`: `pass/reply`, the flow
/// moved along), that opens a row (`OPENS`: `pass/rule`, its flow opened or moved
/// along), or an ICMP error (`RELATED`: `pass/related` if its quote belongs to a live
/// flow). A packet that could be both (a connection between two ports of rows, such
/// as 5269 to 5269) is the reply of the flow it belongs to first, as conntrack finds
/// the connection before the rule. Everything else is `drop/no_rule`.
///
/// The Edge's packet (on an `edge` NIC) for which this node holds no flow picks one
/// up (`state.rs`): as the reply of the lowest of `reply_rows` when it opens nothing,
/// else as its row's opener.
///
/// Inlined: the state tables' keys and new entries live in per-CPU scratch maps
/// (`state.rs`), so the whole program fits one 512-byte stack frame on every kernel
/// of the matrix, and a passing packet pays no BPF-to-BPF call (a return thunk on
/// this kind of CPU).
#[inline(always)]
fn tracked(p: &Packet, nic_role: u32, ifindex: u32, what: u32, reply_rows: u64, bytes: u64, settings: &Settings) -> u32 {
    let mut clock = state::Clock::new();
    if what & RELATED != 0 {
        return if state::related(p, settings, &mut clock) { verdict::PASS_RELATED } else { verdict::DROP_NO_RULE };
    }
    if what & ANSWERS != 0 {
        let pick_up = if nic_role == role::EDGE && what & OPENS == 0 { reply_rows } else { 0 };
        if state::reply(p, nic_role, pick_up, settings, &mut clock) {
            return verdict::PASS_REPLY;
        }
    }
    if what & OPENS != 0 {
        let row = what & 0xff;
        // Rows that open from an edge NIC are answered from the partners' side;
        // the rest are answered by the Edge.
        let reply_roles = if nic_role == role::EDGE { role::bit(role::OUTSIDE) | role::bit(role::HOST) } else { role::bit(role::EDGE) };
        state::open(p, row, reply_roles, ifindex, settings, &mut clock);
        counters::count_rule(row, bytes);
        return verdict::PASS_RULE;
    }
    verdict::DROP_NO_RULE
}

/// Addressed to the machine on its link only: a group Ethernet destination
/// (broadcast, multicast), or a link-local, multicast or limited-broadcast IP one.
#[inline(always)]
fn link_scoped(p: &Packet) -> bool {
    let d = &p.dst;
    p.to_group != 0
        || if p.family == family::V4 {
            (d[0] == 169 && d[1] == 254) || d[0] & 0xf0 == 0xe0 || (d[0] == 255 && d[1] == 255 && d[2] == 255 && d[3] == 255)
        } else {
            d[0] == 0xff || (d[0] == 0xfe && d[1] & 0xc0 == 0x80)
        }
}

/// ICMPv6 router solicitation, advertisement, neighbour solicitation, advertisement,
/// redirect.
const ICMPV6_ND: core::ops::RangeInclusive<u8> = 133..=137;
const ND_HOP_LIMIT: u8 = 255;

/// DHCP's ports: a server answers from `server` to the client's `client`.
const DHCP4: (u16, u16) = (67, 68);
const DHCP6: (u16, u16) = (547, 546);

/// Traffic the host cannot live without: ICMPv6 router and neighbour discovery from
/// the link; on a `host` NIC under `host-dhcp`, a DHCP server's answer. Needs a whole
/// ICMP or UDP header, so a fragment other than the first never qualifies.
#[inline(always)]
fn essential(p: &Packet, nic_role: u32, settings: &Settings) -> bool {
    if p.l4 != L4_WHOLE {
        return false;
    }
    if p.family == family::V6 && p.proto == ipproto::ICMPV6 {
        return ICMPV6_ND.contains(&p.icmp_type) && p.hop_limit == ND_HOP_LIMIT;
    }
    if p.proto != ipproto::UDP || nic_role != role::HOST || settings.flags & flags::HOST_DHCP == 0 {
        return false;
    }
    let (server, client) = if p.family == family::V4 { DHCP4 } else { DHCP6 };
    p.sport_be == server.to_be() && p.dport_be == client.to_be()
}

/// ICMP destination unreachable (fragmentation needed included), time exceeded and
/// parameter problem; ICMPv6 errors 1-4.
#[inline(always)]
fn icmp_error(p: &Packet) -> bool {
    p.l4 == L4_WHOLE && parse::is_icmp_error(p.family, p.proto, p.icmp_type)
}
