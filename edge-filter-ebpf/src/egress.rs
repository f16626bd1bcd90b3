//! Host mode's egress side: where the edge addresses are local, the machine's own
//! packets leave through TC egress and never meet XDP. This records them in the same
//! state tables the XDP program reads, so replies from partners pass at ingress.
//!
//! Contract: a packet from an edge address is judged as if it arrived on an `edge`
//! NIC: one that opens a row (a row whose source is an edge set: federation out, DNS,
//! CRL, the operator's own) opens or moves its flow, its replies allowed on `outside`
//! and `host` NICs; one that is the reply of a row opened from outside (federation in,
//! internal MTLS) moves that flow as the Edge's reply would, and either picks up a
//! flow this machine holds none for, as on an `edge` NIC. Nothing is dropped or
//! counted as a verdict here; a row's hits count its packets, as at ingress.

use aya_ebpf::programs::TcContext;
use edge_filter_common::{role, set};

use crate::{
    counters,
    maps::CONFIG,
    parse::{self, FRAG_NONE, Frame, L4_WHOLE, Packet, Parsed},
    rules,
    sets::sets_of,
    state,
};

#[inline(always)]
pub(crate) fn record(ctx: &TcContext) {
    let frame = Frame::from_skb(ctx);
    let Some(p) = Packet::scratch(parse::TC_SLOT) else {
        return;
    };
    let Ok(Parsed::Ip) = parse::parse(&frame, p) else {
        return;
    };
    let p = &*p;
    if p.l4 != L4_WHOLE || p.frag != FRAG_NONE {
        return;
    }
    // Read in place, as at ingress (userspace writes it before it attaches).
    let Some(config) = CONFIG.get(0) else {
        return;
    };
    let settings = &config.settings;
    let lens = config.lens();
    let src_sets = sets_of(lens, p.family, &p.src);
    if src_sets & set::EDGE_BITS == 0 {
        return;
    }
    let dst_sets = sets_of(lens, p.family, &p.dst);
    let rows = rules::rows(settings, p.proto, p.sport_be, p.dport_be, src_sets, dst_sets, role::EDGE);
    let mut clock = state::Clock::new();
    // SAFETY: reading the skb's ifindex field, which the kernel set.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // As at ingress: the reply of a live flow first, then a row's opener; the host's
    // own packets pick up flows as the Edge's do (a filter attached to a running
    // server keeps its connections).
    if rows.reply != 0 {
        let pick_up = if rows.open == 0 { rows.reply } else { 0 };
        if state::reply(p, role::EDGE, pick_up, settings, &mut clock) {
            return;
        }
    }
    if rows.open != 0 {
        let replies = role::bit(role::OUTSIDE) | role::bit(role::HOST);
        let row = rules::first(rows.open);
        state::open(p, row, replies, ifindex, settings, &mut clock);
        // A row's hits count the host's own packets as they count the Edge's.
        counters::count_rule(row, frame.len() as u64);
    }
}
