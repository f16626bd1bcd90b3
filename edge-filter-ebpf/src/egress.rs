//! Host mode's egress side: where the edge addresses are local, the machine's own
//! packets leave through TC egress and never meet XDP. This records them in the same
//! state tables the XDP program reads, so replies from partners pass at ingress.
//!
//! Contract: a packet from an access-edge address to the federation port opens or
//! continues an R2 flow (replies may arrive on `outside` and `host` NICs); any other
//! TCP packet from an edge address is the host answering: it moves an R1/R3 flow along
//! as the Edge's reply would. Nothing is dropped or counted as a verdict here.

use aya_ebpf::programs::TcContext;
use edge_filter_common::{Settings, role, rule, set};

use crate::{
    maps::SETTINGS,
    parse::{self, FRAG_NONE, Frame, IPPROTO_TCP, L4_WHOLE, Parsed},
    sets::sets_of,
    state,
};

#[inline(always)]
pub fn record(ctx: &TcContext) {
    let frame = Frame::from_skb(ctx);
    let Ok(Parsed::Ip(p)) = parse::parse(&frame) else {
        return;
    };
    if p.proto != IPPROTO_TCP || p.l4 != L4_WHOLE || p.frag != FRAG_NONE {
        return;
    }
    let settings = SETTINGS.get(0).copied().unwrap_or(Settings::DEFAULT);
    let src_sets = sets_of(p.family, &p.src);
    if src_sets == 0 {
        return;
    }
    let mut clock = state::Clock::new();
    if src_sets & set::ACCESS_EDGE != 0 && p.dport_be == settings.federation_port_be {
        let replies = role::bit(role::OUTSIDE) | role::bit(role::HOST);
        state::open(&p, rule::FEDERATION_OUT, replies, &settings, &mut clock);
    } else if p.sport_be == settings.federation_port_be || p.sport_be == settings.internal_port_be {
        // Only an answer from a rule's port can belong to an R1 or R3 flow.
        state::reply(&p, role::EDGE, &settings, &mut clock);
    }
}
