//! The flow table: connections that an allowed packet opened, so that their replies
//! pass and nothing else does.
//!
//! Contract:
//! - A flow is keyed by the 5-tuple in the direction of the packet a rule allowed (the
//!   opener). A reply is looked up by its swapped tuple; no rule ever has to name the
//!   ephemeral port a reply goes to.
//! - A reply passes only if the flow exists, has not expired and the reply arrives on
//!   a NIC whose role the flow names ([`Flow::reply_roles`]): the Edge's answers come
//!   from `edge` NICs, the partners' answers to the Edge from `outside` or `host` ones.
//! - RST from either side removes the flow (the RST itself passes). FIN from either
//!   side moves it to `CLOSING`, which lives for the closing timeout so the last
//!   segments of the close get through.
//! - Expiry is judged on every lookup against the timeout of the flow's state, so an
//!   idle flow is not honoured even while the LRU still holds it.
//! - Writes to a found entry are plain stores: two CPUs racing on one flow can only
//!   disagree about the last-seen time or a state both would set.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use edge_filter_common::{Flow, FlowKey, Settings, flow_state, role};

use crate::{
    maps::FLOWS,
    parse::{Packet, tcp_flags},
};

/// The current time in the flow table's clock.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: a helper without arguments or side effects.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn key(p: &Packet) -> FlowKey {
    FlowKey {
        src: p.src,
        dst: p.dst,
        sport_be: p.sport_be,
        dport_be: p.dport_be,
        family: p.family,
        proto: p.proto,
        _pad: [0; 2],
    }
}

/// The key of the flow this packet would be a reply to.
#[inline(always)]
fn reply_key(p: &Packet) -> FlowKey {
    FlowKey {
        src: p.dst,
        dst: p.src,
        sport_be: p.dport_be,
        dport_be: p.sport_be,
        family: p.family,
        proto: p.proto,
        _pad: [0; 2],
    }
}

#[inline(always)]
fn expired(flow: &Flow, settings: &Settings, now: u64) -> bool {
    let timeout = match flow.state {
        flow_state::SYN_SENT => settings.syn_timeout_ns,
        flow_state::ESTABLISHED => settings.established_timeout_ns,
        _ => settings.closing_timeout_ns,
    };
    now.saturating_sub(flow.last_seen_ns) > timeout
}

/// Record or refresh the flow that `rule` allowed this packet to open or continue.
#[inline(always)]
pub fn open(p: &Packet, rule: u32, reply_roles: u8, settings: &Settings, now: u64) {
    let key = key(p);
    let opening = p.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN;
    if let Some(flow) = FLOWS.get_ptr_mut(&key) {
        // SAFETY: a pointer from a map lookup, valid for this run (RCU); see the
        // module comment for concurrent writers.
        let flow = unsafe { &mut *flow };
        if p.tcp_flags & tcp_flags::RST != 0 {
            let _ = FLOWS.remove(&key);
            return;
        }
        if !opening && !expired(flow, settings, now) {
            flow.last_seen_ns = now;
            if p.tcp_flags & tcp_flags::FIN != 0 {
                flow.state = flow_state::CLOSING;
            }
            return;
        }
        // A new SYN on the tuple, or an expired flow: start over.
    } else if p.tcp_flags & tcp_flags::RST != 0 {
        return;
    }
    let state = if opening {
        flow_state::SYN_SENT
    } else if p.tcp_flags & tcp_flags::FIN != 0 {
        flow_state::CLOSING
    } else {
        flow_state::ESTABLISHED
    };
    let flow = Flow {
        created_ns: now,
        last_seen_ns: now,
        state,
        rule: rule as u8,
        reply_roles,
        _pad: [0; 5],
    };
    // An LRU table makes room by evicting the least recently used flow; a failure here
    // leaves the opener's own packet allowed and only its replies unrecorded.
    let _ = FLOWS.insert(&key, &flow, 0);
}

/// Whether this packet is the reply of a live flow, arriving where replies may; moves
/// the flow's state along.
#[inline(always)]
pub fn reply(p: &Packet, nic_role: u32, settings: &Settings, now: u64) -> bool {
    let key = reply_key(p);
    let Some(flow) = FLOWS.get_ptr_mut(&key) else {
        return false;
    };
    // SAFETY: as in `open`.
    let flow = unsafe { &mut *flow };
    if expired(flow, settings, now) {
        let _ = FLOWS.remove(&key);
        return false;
    }
    if flow.reply_roles & role::bit(nic_role) == 0 {
        return false;
    }
    if p.tcp_flags & tcp_flags::RST != 0 {
        let _ = FLOWS.remove(&key);
        return true;
    }
    flow.last_seen_ns = now;
    if p.tcp_flags & tcp_flags::FIN != 0 {
        flow.state = flow_state::CLOSING;
    } else if flow.state == flow_state::SYN_SENT {
        flow.state = flow_state::ESTABLISHED;
    }
    true
}
