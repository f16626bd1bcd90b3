//! The state table: connections that an allowed packet opened, so that their replies
//! pass and nothing else does, in two tables so that a SYN flood cannot push
//! established federation flows out.
//!
//! Design:
//! - `EMBRYOS` holds handshakes in progress. An allowed SYN creates an entry
//!   (`SYN_SENT`); the responder's SYN-ACK, arriving where replies may, records the
//!   responder's initial sequence number (`SYN_RECV`); the opener's ACK that
//!   acknowledges exactly that number completes the handshake and moves the flow to
//!   `FLOWS`. A spoofed source never sees the SYN-ACK, so it cannot complete the
//!   handshake: a SYN flood, however large, churns `EMBRYOS` only, and the SYN-ACKs
//!   the responder sends to spoofed sources promote nothing.
//! - `FLOWS` holds flows whose handshake completed. Only an RST at the exact sequence
//!   number its sender is at (tracked per direction; RFC 5961 §3.2), expiry, or LRU
//!   eviction by other *completed* flows removes one. A blind RST or SYN, which cannot
//!   know the sequence numbers, passes to the endpoint (which answers it with a
//!   challenge ACK) and leaves the flow in place.
//! - Keys are the 5-tuple in the direction of the opener; a reply is looked up by its
//!   swapped tuple. A reply passes only from a NIC whose role the flow names
//!   ([`Flow::reply_roles`]); before the handshake completes only the SYN-ACK and an
//!   RST cross back.
//! - Timeouts per state (`SYN_SENT`/`SYN_RECV`: syn, `ESTABLISHED`, `CLOSING`) are
//!   judged on every lookup, so an idle entry is not honoured even while the LRU
//!   still holds it.
//! - Every entry that enters or leaves a table by our hand is counted (`event`);
//!   userspace derives LRU evictions as created - removed - live.
//! - Writes to a found entry are plain stores: two CPUs racing on one flow can only
//!   disagree about the last-seen time or a state both would set.

use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::LruHashMap};
use edge_filter_common::{Flow, FlowKey, Settings, event, flow_state};

use crate::{
    counters::count_event as bump,
    maps::{EMBRYOS, FLOWS},
    parse::{Packet, tcp_flags},
};

/// The current time in the state table's clock.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: a helper without arguments or side effects.
    unsafe { bpf_ktime_get_ns() }
}

/// The time, read once and only when a packet needs it: a packet that finds no entry
/// and creates none (most drops) never pays for the clock.
pub struct Clock(u64);

impl Clock {
    #[inline(always)]
    pub fn new() -> Self {
        Self(0)
    }

    /// [`now`], the same value for every call on this packet. (The clock is never 0
    /// once the machine has booted.)
    #[inline(always)]
    pub fn now(&mut self) -> u64 {
        if self.0 == 0 {
            self.0 = now();
        }
        self.0
    }
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
        flow_state::SYN_SENT | flow_state::SYN_RECV => settings.syn_timeout_ns,
        flow_state::ESTABLISHED => settings.established_timeout_ns,
        _ => settings.closing_timeout_ns,
    };
    now.saturating_sub(flow.last_seen_ns) > timeout
}

#[inline(always)]
fn has(p: &Packet, bits: u8) -> bool {
    p.tcp_flags & bits == bits
}

/// The sequence number after this segment: SYN and FIN count one each.
#[inline(always)]
fn seq_end(p: &Packet) -> u32 {
    let syn_fin = u32::from(has(p, tcp_flags::SYN)) + u32::from(has(p, tcp_flags::FIN));
    p.seq.wrapping_add(u32::from(p.tcp_payload)).wrapping_add(syn_fin)
}

/// Move a direction's next sequence number forward (modulo 2^32) past this segment.
#[inline(always)]
fn advance(next: &mut u32, p: &Packet) {
    let end = seq_end(p);
    if end.wrapping_sub(*next) as i32 > 0 {
        *next = end;
    }
}

/// A found entry, or `None` if there is none or it expired (then it is removed and
/// counted).
#[inline(always)]
fn live<'a>(
    table: &LruHashMap<FlowKey, Flow>,
    key: &FlowKey,
    settings: &Settings,
    clock: &mut Clock,
    expired_event: u32,
) -> Option<&'a mut Flow> {
    let flow = table.get_ptr_mut(key)?;
    // SAFETY: a pointer from a map lookup, valid for this run (RCU); see the module
    // comment for concurrent writers.
    let flow = unsafe { &mut *flow };
    if expired(flow, settings, clock.now()) {
        if table.remove(key).is_ok() {
            bump(expired_event);
        }
        return None;
    }
    Some(flow)
}

#[inline(always)]
fn remove(table: &LruHashMap<FlowKey, Flow>, key: &FlowKey, closed_event: u32) {
    if table.remove(key).is_ok() {
        bump(closed_event);
    }
}

/// A packet `rule` allowed, in the opener's direction: start, complete or continue
/// its flow.
#[inline(always)]
pub fn open(p: &Packet, rule: u32, reply_roles: u8, settings: &Settings, clock: &mut Clock) {
    let key = key(p);
    let syn = has(p, tcp_flags::SYN) && !has(p, tcp_flags::ACK);
    if let Some(flow) = live(&FLOWS, &key, settings, clock, event::FLOW_EXPIRED) {
        if has(p, tcp_flags::RST) {
            if p.seq == flow.opener_next {
                remove(&FLOWS, &key, event::FLOW_CLOSED);
            }
        } else if !syn {
            flow.last_seen_ns = clock.now();
            advance(&mut flow.opener_next, p);
            if has(p, tcp_flags::FIN) {
                flow.state = flow_state::CLOSING;
            }
        }
        return;
    }
    if syn {
        if let Some(embryo) = live(&EMBRYOS, &key, settings, clock, event::EMBRYO_EXPIRED) {
            // A retransmitted SYN: the same handshake, started again.
            embryo.last_seen_ns = clock.now();
            embryo.state = flow_state::SYN_SENT;
            return;
        }
        let now = clock.now();
        let embryo = Flow {
            created_ns: now,
            last_seen_ns: now,
            state: flow_state::SYN_SENT,
            rule: rule as u8,
            reply_roles,
            _pad: 0,
            responder_isn: 0,
            opener_next: 0,
            responder_next: 0,
        };
        // The table is an LRU: it makes room by evicting the oldest handshake.
        bump(if EMBRYOS.insert(&key, &embryo, 0).is_ok() { event::EMBRYO_CREATED } else { event::EMBRYO_INSERT_FAILED });
        return;
    }
    let Some(embryo) = live(&EMBRYOS, &key, settings, clock, event::EMBRYO_EXPIRED) else {
        return;
    };
    if has(p, tcp_flags::RST) {
        remove(&EMBRYOS, &key, event::EMBRYO_CLOSED);
        return;
    }
    if embryo.state != flow_state::SYN_RECV
        || !has(p, tcp_flags::ACK)
        || p.ack_seq != embryo.responder_isn.wrapping_add(1)
    {
        return;
    }
    // The opener acknowledged the responder's SYN-ACK: a completed handshake.
    let flow = Flow {
        created_ns: embryo.created_ns,
        last_seen_ns: clock.now(),
        state: if has(p, tcp_flags::FIN) { flow_state::CLOSING } else { flow_state::ESTABLISHED },
        rule: embryo.rule,
        reply_roles: embryo.reply_roles,
        _pad: 0,
        responder_isn: embryo.responder_isn,
        opener_next: seq_end(p),
        responder_next: embryo.responder_isn.wrapping_add(1),
    };
    bump(if FLOWS.insert(&key, &flow, 0).is_ok() { event::FLOW_CREATED } else { event::FLOW_INSERT_FAILED });
    remove(&EMBRYOS, &key, event::EMBRYO_CLOSED);
}

/// Whether this packet is the reply of a live flow, arriving where replies may; moves
/// the flow's state along.
#[inline(always)]
pub fn reply(p: &Packet, nic_role: u32, settings: &Settings, clock: &mut Clock) -> bool {
    let key = reply_key(p);
    let bit = edge_filter_common::role::bit(nic_role);
    if let Some(flow) = live(&FLOWS, &key, settings, clock, event::FLOW_EXPIRED) {
        if flow.reply_roles & bit == 0 {
            return false;
        }
        if has(p, tcp_flags::RST) {
            if p.seq == flow.responder_next {
                remove(&FLOWS, &key, event::FLOW_CLOSED);
            }
        } else {
            flow.last_seen_ns = clock.now();
            advance(&mut flow.responder_next, p);
            if has(p, tcp_flags::FIN) {
                flow.state = flow_state::CLOSING;
            }
        }
        return true;
    }
    // Before the handshake completes, nothing but the SYN-ACK and an RST crosses
    // back: anything else need not look for a handshake.
    if !has(p, tcp_flags::RST) && !has(p, tcp_flags::SYN | tcp_flags::ACK) {
        return false;
    }
    let Some(embryo) = live(&EMBRYOS, &key, settings, clock, event::EMBRYO_EXPIRED) else {
        return false;
    };
    if embryo.reply_roles & bit == 0 {
        return false;
    }
    if has(p, tcp_flags::RST) {
        remove(&EMBRYOS, &key, event::EMBRYO_CLOSED);
        return true;
    }
    if !has(p, tcp_flags::SYN | tcp_flags::ACK) {
        return false;
    }
    embryo.responder_isn = p.seq;
    embryo.state = flow_state::SYN_RECV;
    embryo.last_seen_ns = clock.now();
    true
}
