//! The state tables: flows that an allowed packet opened, so that their replies pass
//! and nothing else does, kept so that an outsider who knows a flow's 4-tuple cannot
//! tear it down, stall it or push it out.
//!
//! Tables (all keyed by the 5-tuple in the opener's direction; a reply is looked up by
//! its swapped tuple):
//! - `EMBRYOS`, `EMBRYOS_OUT`: TCP handshakes in progress, opened from outside and
//!   from the trusted side (an `edge` NIC, the host's egress) respectively, so that a
//!   SYN flood from outside churns only its own kind and never the Edge's own
//!   connection attempts. A SYN a row allows creates one; a SYN-ACK
//!   that acknowledges exactly the opener's ISN + 1, arriving where replies may,
//!   records the responder's ISN; the opener's ACK at ISN + 1 that acknowledges the
//!   responder's ISN + 1 completes it and moves it to `FLOWS`. A spoofed source never
//!   sees the SYN-ACK, so a SYN flood churns this table only.
//! - `FLOWS`: TCP flows whose handshake completed. Only expiry, an RST at the
//!   receiver's next number, or LRU eviction by other *completed* flows removes one.
//! - `UDP_FLOWS`: UDP flows; a row's datagram opens or refreshes one, datagrams of the
//!   reverse tuple pass until it is idle for the UDP timeout. A table of its own, so
//!   that no amount of UDP evicts a TCP flow.
//!
//! What moves a TCP flow (the contract the README's state section states):
//! - Every packet of a known flow passes (`pass/rule` from the opener, `pass/reply`
//!   from the responder). It *moves* the flow only when it fits: a segment must lie in
//!   the receiver's window and acknowledge only what the other side sent (the four
//!   tests of Linux conntrack's `tcp_in_window`, with window scaling from the SYNs).
//!   A segment that does not fit passes to the endpoint, whose own TCP discards it,
//!   and changes nothing here: conntrack's `be_liberal`, chosen so that a wrong guess
//!   of ours never breaks a connection, while no blind packet can move our state.
//! - An RST in the window at the receiver's next number (its latest acknowledgement,
//!   or the sender's own next number) removes the flow. Elsewhere in the window it
//!   moves the flow to `RESET`: the endpoint answers such an RST with a challenge ACK
//!   (RFC 5961 §3.2), and that answer, or any in-window segment from the side the RST
//!   was sent to, makes the flow established again; otherwise it expires after the
//!   closing timeout.
//! - A FIN moves the flow to `CLOSING` only once its receiver acknowledged it, and is
//!   forgotten when its sender sends data beyond it: a FIN the endpoint never
//!   accepted (a blind one, or one with a bad checksum) does not shorten the flow's
//!   timeout.
//! - A handshake: a SYN with another ISN does not restart it; a SYN-ACK that does not
//!   acknowledge the SYN, or a second one with another ISN, is not recorded; an RST
//!   ends it only at the right number (from the responder: acknowledging the SYN; from
//!   the opener: at ISN + 1).
//! - The opener's packets move a flow only on the NIC it was opened on
//!   ([`Flow::ifindex`]); replies only on a NIC of a role the flow names
//!   ([`Flow::reply_roles`]).
//! - Fair tables: one source prefix (the side of a flow that is not the Edge's, masked
//!   to /24 or /64 by default) holds at most `max_flows_per_source` established
//!   flows (`SOURCES` counts them). A handshake completed beyond that is not recorded
//!   and is counted (`source_limited`), so a flood of completed handshakes from one
//!   prefix can never fill the flow table and push another source's flow out. The
//!   kernel counts a flow up when it enters `FLOWS` and down when it removes one;
//!   flows the LRU evicts or that expire unseen leave the count high, and two CPUs
//!   may lose a count in a race, until the daemon recounts (it does every minute).
//! - Pickup (a firewall pair's failover; `state.pickup`, on by default): the node that
//!   takes over has no flow for the connections its peer carried. A packet the Edge
//!   sends (arriving on an `edge` NIC or leaving through the host's egress, from an
//!   edge set, a row's packet or a row's reply, TCP with ACK and without SYN or RST,
//!   or UDP) for which `FLOWS` (`UDP_FLOWS`) holds nothing records the flow as
//!   established (`origin::PICKED_UP`, counted `FLOW_PICKED_UP`, `UDP_PICKED_UP`).
//!   Only the trusted side can do this: nothing arriving on an `outside` or `host`
//!   NIC creates state but a row's SYN (and a row's datagram), so the SYN-flood and
//!   blind-packet guarantees hold unchanged. The connection's history is lost, so:
//!   its windows are taken as wide as TCP allows (2^30, the scale of SYNs never
//!   seen); the Edge's side is `LIBERAL` (its segments always fit, and what it
//!   acknowledges the other side sent), which keeps the bounds true from the first
//!   segment; the other side is `UNSURE`: its RST ends the flow only at the number
//!   the Edge acknowledged, never at its own `end`, which a blind segment in such a
//!   window could move. An outsider's RST inside the window moves the flow to
//!   `RESET`, which the Edge's challenge ACK undoes, as for any flow. A flow picked
//!   up from its reply does not know the opener's NIC (`Flow::UNBOUND`): the
//!   opener's first segment that fits binds it.
//! - Timeouts per state are judged on every lookup, so an idle entry is not honoured
//!   even while the LRU still holds it.
//! - Every entry that enters or leaves a table by our hand is counted (`event`);
//!   userspace derives LRU evictions as created - removed - live.
//! - Writes to a found entry are plain stores: two CPUs racing on one flow can only
//!   disagree about the last-seen time or a bound both would move forward.

use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray},
};
use edge_filter_common::{
    Flow, FlowKey, FlowKey4, Settings, SourceKey, TcpDir, dir_flags, event, family, flags, flow_state, hint, ipproto, origin, role, tcp_flags,
};

use crate::{
    clock,
    counters::count_event as bump,
    maps::{EMBRYOS, EMBRYOS_OUT, EMBRYOS_OUT4, EMBRYOS4, FLOWS, FLOWS4, SOURCES, UDP_FLOWS, UDP_FLOWS4},
    mem,
    parse::{NO_WSCALE, Packet, QUOTE},
};

/// The time, read once and only when a packet needs it: a packet that finds no entry
/// and creates none (most drops) never pays for the clock.
pub(crate) struct Clock(u64);

impl Clock {
    #[inline(always)]
    pub(crate) fn new() -> Self {
        Self(0)
    }

    /// [`clock::now`], the same value for every call on this packet. (The clock is
    /// never 0 once the machine has booted.)
    #[inline(always)]
    pub(crate) fn now(&mut self) -> u64 {
        if self.0 == 0 {
            self.0 = clock::now();
        }
        self.0
    }
}

/// Index 0 -> the entry being built for an insert on this CPU. Scratch space: a
/// `Flow` is 64 bytes, and on the stack it would push the deepest call chain past the
/// verifier's 512-byte limit.
#[map]
static NEW_FLOW: PerCpuArray<Flow> = PerCpuArray::with_max_entries(1, 0);

/// Index 0 -> the source prefix being counted on this CPU; scratch space.
#[map]
static SOURCE_KEY: PerCpuArray<SourceKey> = PerCpuArray::with_max_entries(1, 0);

/// The scratch entry, reset to a new flow.
#[inline(always)]
fn new_flow<'a>(now: u64, state: u8, rule: u32, reply_roles: u8, ifindex: u32) -> Option<&'a mut Flow> {
    let f = NEW_FLOW.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch slot, valid for this run and used by this run only.
    let f = unsafe { &mut *f };
    // SAFETY: `Flow` is 64 bytes aligned to 8; its two directions are the 40 bytes
    // from offset 24.
    unsafe { mem::zero((f as *mut Flow).cast::<u8>().add(24), 5) };
    f.created_ns = now;
    f.last_seen_ns = now;
    f.ifindex = ifindex;
    f.state = state;
    f.rule = rule as u8;
    f.reply_roles = reply_roles;
    f.origin = origin::OPENED;
    Some(f)
}

/// A handshake table and the events it counts under.
struct Embryos<K: 'static> {
    table: &'static LruHashMap<K, Flow>,
    created: u32,
    expired: u32,
    closed: u32,
    failed: u32,
}

impl<K> Embryos<K> {
    /// Handshakes opened from outside, in `table`.
    const fn from_outside(table: &'static LruHashMap<K, Flow>) -> Self {
        Self {
            table,
            created: event::EMBRYO_CREATED,
            expired: event::EMBRYO_EXPIRED,
            closed: event::EMBRYO_CLOSED,
            failed: event::EMBRYO_INSERT_FAILED,
        }
    }

    /// Handshakes the trusted side opened, in `table`.
    const fn from_trusted(table: &'static LruHashMap<K, Flow>) -> Self {
        Self {
            table,
            created: event::EMBRYO_OUT_CREATED,
            expired: event::EMBRYO_OUT_EXPIRED,
            closed: event::EMBRYO_OUT_CLOSED,
            failed: event::EMBRYO_OUT_INSERT_FAILED,
        }
    }
}

/// One address family's tables and flow key. The state code is written once over
/// this, and each family's copy reads its own tables: an IPv4 flow's key is 12 bytes
/// (`FlowKey4`), which the kernel hashes in one round where the 40-byte `FlowKey` of
/// IPv6 takes four, and the hash is most of what a lookup costs.
trait Family {
    type Key: 'static;
    /// The [`family`] of its keys.
    const FAMILY: u8;
    /// Flows whose handshake completed.
    const FLOWS: &'static LruHashMap<Self::Key, Flow>;
    const UDP_FLOWS: &'static LruHashMap<Self::Key, Flow>;
    const FROM_OUTSIDE: Embryos<Self::Key>;
    const FROM_TRUSTED: Embryos<Self::Key>;

    /// This packet's tuple (`reply`: swapped, the key of the flow it would answer), in
    /// the packet's scratch key ([`Packet::key`]: not on the stack, where two keys were
    /// what the verifier's 512-byte limit could not afford, and no lookup of its own).
    fn key(p: &Packet, reply: bool) -> &Self::Key;

    /// The key of the other direction, in place.
    fn swap(key: &mut Self::Key);

    /// `key`'s source prefix into `s.addr`: the opener's address (`opener`), else the
    /// responder's, masked to the settings' source length.
    fn source(key: &Self::Key, opener: bool, settings: &Settings, s: &mut SourceKey);
}

struct V4;
struct V6;

impl Family for V4 {
    type Key = FlowKey4;
    const FAMILY: u8 = family::V4;
    const FLOWS: &'static LruHashMap<FlowKey4, Flow> = &FLOWS4;
    const UDP_FLOWS: &'static LruHashMap<FlowKey4, Flow> = &UDP_FLOWS4;
    const FROM_OUTSIDE: Embryos<FlowKey4> = Embryos::from_outside(&EMBRYOS4);
    const FROM_TRUSTED: Embryos<FlowKey4> = Embryos::from_trusted(&EMBRYOS_OUT4);

    #[inline(always)]
    fn key(p: &Packet, reply: bool) -> &FlowKey4 {
        let k = p.key4();
        let (src, dst) = if reply { (&p.dst, &p.src) } else { (&p.src, &p.dst) };
        k.src = [src[0], src[1], src[2], src[3]];
        k.dst = [dst[0], dst[1], dst[2], dst[3]];
        (k.sport_be, k.dport_be) = if reply { (p.dport_be, p.sport_be) } else { (p.sport_be, p.dport_be) };
        k
    }

    #[inline(always)]
    fn swap(key: &mut FlowKey4) {
        core::mem::swap(&mut key.src, &mut key.dst);
        core::mem::swap(&mut key.sport_be, &mut key.dport_be);
    }

    #[inline(always)]
    fn source(key: &FlowKey4, opener: bool, settings: &Settings, s: &mut SourceKey) {
        let addr = if opener { key.src } else { key.dst };
        let a = u32::from_be_bytes(addr) & hint::mask32(u32::from(settings.source_len4));
        mem::set_addr4(&mut s.addr, a.to_be_bytes());
    }
}

impl Family for V6 {
    type Key = FlowKey;
    const FAMILY: u8 = family::V6;
    const FLOWS: &'static LruHashMap<FlowKey, Flow> = &FLOWS;
    const UDP_FLOWS: &'static LruHashMap<FlowKey, Flow> = &UDP_FLOWS;
    const FROM_OUTSIDE: Embryos<FlowKey> = Embryos::from_outside(&EMBRYOS);
    const FROM_TRUSTED: Embryos<FlowKey> = Embryos::from_trusted(&EMBRYOS_OUT);

    #[inline(always)]
    fn key(p: &Packet, reply: bool) -> &FlowKey {
        let k = p.key();
        if reply {
            mem::set_addr(&mut k.src, &p.dst);
            mem::set_addr(&mut k.dst, &p.src);
            k.sport_be = p.dport_be;
            k.dport_be = p.sport_be;
        } else {
            mem::set_addr(&mut k.src, &p.src);
            mem::set_addr(&mut k.dst, &p.dst);
            k.sport_be = p.sport_be;
            k.dport_be = p.dport_be;
        }
        k.family = family::V6;
        k.proto = p.proto;
        k._pad = [0; 2];
        k
    }

    #[inline(always)]
    fn swap(key: &mut FlowKey) {
        core::mem::swap(&mut key.src, &mut key.dst);
        core::mem::swap(&mut key.sport_be, &mut key.dport_be);
    }

    #[inline(always)]
    fn source(key: &FlowKey, opener: bool, settings: &Settings, s: &mut SourceKey) {
        let addr = if opener { &key.src } else { &key.dst };
        mem::set_addr(&mut s.addr, &hint::mask6(addr, u32::from(settings.source_len6)));
    }
}

/// The handshake table of a flow whose replies arrive on NICs of `reply_roles`: a flow
/// answered by the Edge was opened from outside.
#[inline(always)]
fn embryos<F: Family>(reply_roles: u8) -> &'static Embryos<F::Key> {
    if reply_roles & role::bit(role::EDGE) != 0 { &F::FROM_OUTSIDE } else { &F::FROM_TRUSTED }
}

/// Conntrack's floor for the acknowledgement window (`MAXACKWINCONST`).
const MAX_ACK_WINDOW: u32 = 66_000;

#[inline(always)]
fn expired(flow: &Flow, settings: &Settings, udp: bool, now: u64) -> bool {
    now.saturating_sub(flow.last_seen_ns) > settings.idle_timeout_ns(flow.state, udp)
}

/// A found entry, or `None` if there is none or it expired (then it is removed and
/// counted).
#[inline(always)]
fn live<'a, F: Family>(
    table: &LruHashMap<F::Key, Flow>,
    key: &F::Key,
    settings: &Settings,
    clock: &mut Clock,
    expired_event: u32,
) -> Option<&'a mut Flow> {
    let flow = table.get_ptr_mut(key)?;
    // SAFETY: a pointer from a map lookup, valid for this run (RCU); see the module
    // comment for concurrent writers.
    let flow = unsafe { &mut *flow };
    if expired(flow, settings, expired_event == event::UDP_EXPIRED, clock.now()) {
        let source = if expired_event == event::FLOW_EXPIRED { source_of::<F>(key, flow, settings) } else { None };
        if table.remove(key).is_ok() {
            bump(expired_event);
            if let Some(source) = source {
                forget(source);
            }
        }
        return None;
    }
    Some(flow)
}

#[inline(always)]
fn remove<K>(table: &LruHashMap<K, Flow>, key: &K, closed_event: u32) {
    if table.remove(key).is_ok() {
        bump(closed_event);
    }
}

/// Remove an established flow by our hand, and count its source down.
#[inline(always)]
fn close<F: Family>(key: &F::Key, flow: &Flow, settings: &Settings) {
    let source = source_of::<F>(key, flow, settings);
    if F::FLOWS.remove(key).is_ok() {
        bump(event::FLOW_CLOSED);
        if let Some(source) = source {
            forget(source);
        }
    }
}

/// The source prefix of a flow: its side that is not the Edge's (the opener when it
/// opened from an `outside` or `host` NIC, else the responder).
/// In the scratch source key.
#[inline(always)]
fn source_of<'a, F: Family>(key: &F::Key, flow: &Flow, settings: &Settings) -> Option<&'a mut SourceKey> {
    let s = SOURCE_KEY.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch slot, valid for this run and used by this run only.
    let s = unsafe { &mut *s };
    // SAFETY: the family and the padding after it are the word at offset 16 of the
    // 24-byte, 8-aligned `SourceKey` (little-endian: the family is its low byte).
    unsafe { mem::set_word((s as *mut SourceKey).cast::<u8>().add(16), u64::from(F::FAMILY)) };
    F::source(key, flow.reply_roles & role::bit(role::EDGE) != 0, settings, s);
    Some(s)
}

/// Whether the source may hold one more established flow; if so, it is counted.
#[inline(always)]
fn admit(source: &SourceKey, settings: &Settings) -> bool {
    let Some(count) = SOURCES.get_ptr_mut(source) else {
        // A new source. The table is an LRU: a source it forgets starts again from
        // zero, which errs towards admitting, never towards refusing.
        let _ = SOURCES.insert(source, &1, 0);
        return true;
    };
    // SAFETY: a pointer from a map lookup, valid for this run. Plain read-modify-write:
    // Rust's BPF target has no atomic add, and two CPUs completing handshakes of one
    // prefix in the same instant can only lose a count, which the daemon's recount
    // puts right within a minute.
    let count = unsafe { &mut *count };
    // A count a decrement took below zero (the daemon recounted meanwhile) reads as
    // huge; it is no reason to refuse.
    if *count >= u64::from(settings.max_flows_per_source) && *count < 1 << 63 {
        return false;
    }
    *count = count.wrapping_add(1);
    true
}

/// Count a source down when one of its flows leaves the table by our hand.
#[inline(always)]
fn forget(source: &SourceKey) {
    if let Some(count) = SOURCES.get_ptr_mut(source) {
        // SAFETY: as in `admit`.
        let count = unsafe { &mut *count };
        *count = count.wrapping_sub(1);
    }
}

#[inline(always)]
fn has(p: &Packet, bits: u8) -> bool {
    p.tcp_flags & bits == bits
}

/// `a` is after `b`, modulo 2^32.
#[inline(always)]
fn after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// `a` is `b` or after it, modulo 2^32.
#[inline(always)]
fn after_eq(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}

/// The sequence number after this segment: SYN and FIN count one each.
#[inline(always)]
fn seq_end(p: &Packet) -> u32 {
    let syn_fin = u32::from(has(p, tcp_flags::SYN)) + u32::from(has(p, tcp_flags::FIN));
    p.seq.wrapping_add(u32::from(p.tcp_payload)).wrapping_add(syn_fin)
}

/// The segment's window, scaled as its sender's SYN said (a SYN's own window never
/// is, RFC 7323 §2.2).
#[inline(always)]
fn window(p: &Packet, sender: &TcpDir) -> u32 {
    if has(p, tcp_flags::SYN) { u32::from(p.window) } else { u32::from(p.window) << (sender.wscale & 15) }
}

/// Whether a segment from `s` to `r` fits: conntrack's four tests. I: it starts no
/// later than the receiver allows; II: it ends no earlier than the oldest data the
/// receiver could still be sent; III: it acknowledges nothing the receiver has not
/// sent; IV: nor anything too far back.
#[inline(always)]
fn fits(p: &Packet, s: &TcpDir, r: &TcpDir) -> bool {
    let end = seq_end(p);
    if !after_eq(s.maxend, p.seq) || !after_eq(end, s.end.wrapping_sub(r.maxwin)) {
        return false;
    }
    if !has(p, tcp_flags::ACK) {
        return true;
    }
    let ack_window = if s.maxwin > MAX_ACK_WINDOW { s.maxwin } else { MAX_ACK_WINDOW };
    after_eq(r.end, p.ack_seq) && after_eq(p.ack_seq, r.end.wrapping_sub(ack_window))
}

/// Move both directions' bounds past a segment from `s` to `r` that fits.
#[inline(always)]
fn update(p: &Packet, s: &mut TcpDir, r: &mut TcpDir) {
    let win = window(p, s);
    if win > s.maxwin {
        s.maxwin = win;
    }
    let end = seq_end(p);
    if after(end, s.end) {
        s.end = end;
    }
    if has(p, tcp_flags::ACK) {
        if after(p.ack_seq, s.ack) {
            s.ack = p.ack_seq;
        }
        let right = p.ack_seq.wrapping_add(win);
        if after(right, r.maxend) {
            r.maxend = right;
        }
    }
}

/// What a segment did to its flow.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Seg {
    /// The flow stays: the segment did not fit, or it was an RST inside the window
    /// (which says nothing about where its sender is).
    Stays,
    /// It fitted and moved the flow's bounds.
    Moved,
    /// An RST at the receiver's next number: the flow is to be removed.
    Ends,
}

/// A segment of an established flow from `s` to `r` (opener to responder, or back).
#[inline(always)]
fn segment(p: &Packet, flow_state: &mut u8, s: &mut TcpDir, r: &mut TcpDir) -> Seg {
    let liberal = s.flags & dir_flags::LIBERAL != 0;
    if !liberal && !fits(p, s, r) {
        return Seg::Stays;
    }
    if has(p, tcp_flags::RST) {
        if p.seq == r.ack || (p.seq == s.end && s.flags & dir_flags::UNSURE == 0) {
            return Seg::Ends;
        }
        r.flags |= dir_flags::RST_PENDING;
        *flow_state = flow_state::RESET;
        return Seg::Stays;
    }
    if s.flags & dir_flags::FIN != 0 && after(seq_end(p), s.end) {
        // Data beyond a FIN: that FIN was never the sender's last word (one the
        // endpoint did not accept, a blind one); forget it.
        s.flags &= !dir_flags::FIN;
    }
    update(p, s, r);
    if liberal && has(p, tcp_flags::ACK) && after(p.ack_seq, r.end) {
        // The trusted side acknowledged it: the other side sent it.
        r.end = p.ack_seq;
    }
    if s.flags & dir_flags::RST_PENDING != 0 {
        // The side an RST was sent to speaks again: it did not take the RST.
        s.flags &= !dir_flags::RST_PENDING;
        if *flow_state == flow_state::RESET {
            *flow_state = flow_state::ESTABLISHED;
        }
    }
    if has(p, tcp_flags::FIN) {
        s.flags |= dir_flags::FIN;
    }
    // The receiver's FIN, acknowledged by this segment: the flow is closing.
    if r.flags & dir_flags::FIN != 0 && has(p, tcp_flags::ACK) && after_eq(p.ack_seq, r.end) {
        *flow_state = flow_state::CLOSING;
    }
    Seg::Moved
}

/// A packet row `rule` allowed, in the opener's direction, arriving on `ifindex`:
/// open, continue or close its flow.
#[inline(always)]
pub(crate) fn open(p: &Packet, rule: u32, reply_roles: u8, ifindex: u32, settings: &Settings, clock: &mut Clock) {
    if p.family == family::V4 {
        open_in::<V4>(p, rule, reply_roles, ifindex, settings, clock);
    } else {
        open_in::<V6>(p, rule, reply_roles, ifindex, settings, clock);
    }
}

#[inline(always)]
fn open_in<F: Family>(p: &Packet, rule: u32, reply_roles: u8, ifindex: u32, settings: &Settings, clock: &mut Clock) {
    if p.proto == ipproto::UDP {
        open_udp::<F>(p, rule, reply_roles, ifindex, settings, clock);
    } else if p.proto == ipproto::TCP {
        open_tcp::<F>(p, rule, reply_roles, ifindex, settings, clock);
    }
}

#[inline(always)]
fn open_udp<F: Family>(p: &Packet, rule: u32, reply_roles: u8, ifindex: u32, settings: &Settings, clock: &mut Clock) {
    let key = F::key(p, false);
    if let Some(flow) = live::<F>(F::UDP_FLOWS, key, settings, clock, event::UDP_EXPIRED) {
        // A flow picked up from its reply is bound by the opener's first datagram.
        if flow.ifindex == ifindex || flow.ifindex == Flow::UNBOUND {
            flow.ifindex = ifindex;
            flow.last_seen_ns = clock.now();
        }
        return;
    }
    let Some(flow) = new_flow(clock.now(), flow_state::ESTABLISHED, rule, reply_roles, ifindex) else {
        return;
    };
    bump(if F::UDP_FLOWS.insert(key, flow, 0).is_ok() { event::UDP_CREATED } else { event::UDP_INSERT_FAILED });
}

#[inline(always)]
fn open_tcp<F: Family>(p: &Packet, rule: u32, reply_roles: u8, ifindex: u32, settings: &Settings, clock: &mut Clock) {
    let key = F::key(p, false);
    let syn = has(p, tcp_flags::SYN) && !has(p, tcp_flags::ACK);
    if let Some(flow) = live::<F>(F::FLOWS, key, settings, clock, event::FLOW_EXPIRED) {
        if flow.ifindex != ifindex && flow.ifindex != Flow::UNBOUND {
            return;
        }
        if syn {
            // A new connection on the tuple of one that is ending: start afresh.
            // Anything else a SYN cannot touch.
            if flow.state != flow_state::CLOSING && flow.state != flow_state::RESET {
                return;
            }
            close::<F>(key, flow, settings);
        } else {
            match segment(p, &mut flow.state, &mut flow.opener, &mut flow.responder) {
                Seg::Ends => close::<F>(key, flow, settings),
                seg => {
                    flow.last_seen_ns = clock.now();
                    // A flow picked up from its reply is bound by the opener's first
                    // segment that fits.
                    if seg == Seg::Moved {
                        flow.ifindex = ifindex;
                    }
                }
            }
            return;
        }
    }
    let e = embryos::<F>(reply_roles);
    let Some(embryo) = live::<F>(e.table, key, settings, clock, e.expired) else {
        // The trusted side's segment of a connection this node never saw open.
        if reply_roles & role::bit(role::EDGE) == 0 && may_pick_up(p, settings) {
            pick_up_tcp::<F>(key, p, rule, reply_roles, ifindex, true, settings, clock);
            return;
        }
        if syn {
            let Some(embryo) = new_flow(clock.now(), flow_state::SYN_SENT, rule, reply_roles, ifindex) else {
                return;
            };
            embryo.opener.end = seq_end(p);
            embryo.opener.maxend = seq_end(p);
            embryo.opener.maxwin = u32::from(p.window);
            if p.wscale != NO_WSCALE {
                embryo.opener.wscale = p.wscale;
                embryo.opener.flags = dir_flags::WSCALE;
            }
            // The table is an LRU: it makes room by evicting the oldest handshake.
            bump(if e.table.insert(key, embryo, 0).is_ok() { e.created } else { e.failed });
        }
        return;
    };
    if embryo.ifindex != ifindex {
        return;
    }
    let isn_next = embryo.opener.end;
    if syn {
        // A retransmitted SYN refreshes its handshake; one with another ISN is not
        // this handshake's and changes nothing.
        if seq_end(p) == isn_next {
            embryo.last_seen_ns = clock.now();
        }
        return;
    }
    if has(p, tcp_flags::RST) {
        if p.seq == isn_next {
            remove(e.table, key, e.closed);
        }
        return;
    }
    if embryo.state != flow_state::SYN_RECV || !has(p, tcp_flags::ACK) || p.seq != isn_next || p.ack_seq != embryo.responder.end {
        return;
    }
    // The opener acknowledged the responder's SYN-ACK: a completed handshake.
    let Some(flow) = NEW_FLOW.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: as in `new_flow`.
    let flow = unsafe { &mut *flow };
    // SAFETY: two `Flow`s, 64 bytes aligned to 8 each, one scratch and one in a map.
    unsafe { mem::copy((flow as *mut Flow).cast::<u8>(), (embryo as *const Flow).cast::<u8>(), 8) };
    if flow.opener.flags & flow.responder.flags & dir_flags::WSCALE == 0 {
        // RFC 7323 §2.2: without the option in both SYNs, neither side scales.
        flow.opener.wscale = 0;
        flow.responder.wscale = 0;
    }
    flow.last_seen_ns = clock.now();
    flow.state = flow_state::ESTABLISHED;
    flow.responder.ack = isn_next;
    update(p, &mut flow.opener, &mut flow.responder);
    if has(p, tcp_flags::FIN) {
        flow.opener.flags |= dir_flags::FIN;
    }
    enter::<F>(key, flow, settings, event::FLOW_CREATED);
    remove(e.table, key, e.closed);
}

/// Put an established flow in `FLOWS` if its source prefix may hold one more; counted
/// under `created`.
#[inline(always)]
fn enter<F: Family>(key: &F::Key, flow: &Flow, settings: &Settings, created: u32) {
    let Some(source) = source_of::<F>(key, flow, settings) else {
        return;
    };
    if !admit(source, settings) {
        bump(event::SOURCE_LIMITED);
    } else if F::FLOWS.insert(key, flow, 0).is_ok() {
        bump(created);
    } else {
        bump(event::FLOW_INSERT_FAILED);
        forget(source);
    }
}

/// The widest window TCP can advertise (65535 << 14, RFC 7323 §2.3), rounded up: a
/// picked-up flow's windows, whose scale was in SYNs this node never saw.
const PICKUP_WINDOW: u32 = 1 << 30;
/// RFC 7323's largest window scale.
const MAX_WSCALE: u8 = 14;

/// Whether this packet (arriving on an `edge` NIC: the caller checks) may pick up a
/// flow: pickup is on, and it is TCP that is neither a SYN nor an RST and carries an
/// acknowledgement, or UDP.
#[inline(always)]
pub(crate) fn may_pick_up(p: &Packet, settings: &Settings) -> bool {
    settings.flags & flags::NO_PICKUP == 0
        && (p.proto == ipproto::UDP || (has(p, tcp_flags::ACK) && p.tcp_flags & (tcp_flags::SYN | tcp_flags::RST) == 0))
}

/// Record an established TCP flow from the trusted side's segment `p`, for `key` (the
/// opener's tuple); `opener`: `p` is the opener's (the Edge opened it), else the
/// responder's (the partner did). The trusted side's bounds come from `p`; the other
/// side's from what `p` acknowledges and allows, in windows as wide as TCP allows.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pick_up_tcp<F: Family>(key: &F::Key, p: &Packet, rule: u32, reply_roles: u8, ifindex: u32, opener: bool, settings: &Settings, clock: &mut Clock) {
    let Some(flow) = new_flow(clock.now(), flow_state::ESTABLISHED, rule, reply_roles, ifindex) else {
        return;
    };
    flow.origin = origin::PICKED_UP;
    let (t, u) = if opener { (&mut flow.opener, &mut flow.responder) } else { (&mut flow.responder, &mut flow.opener) };
    let end = seq_end(p);
    t.end = end;
    t.maxend = end.wrapping_add(PICKUP_WINDOW);
    t.maxwin = PICKUP_WINDOW;
    t.ack = p.ack_seq;
    t.wscale = MAX_WSCALE;
    t.flags = dir_flags::LIBERAL | if has(p, tcp_flags::FIN) { dir_flags::FIN } else { 0 };
    u.end = p.ack_seq;
    u.maxend = p.ack_seq.wrapping_add(u32::from(p.window) << MAX_WSCALE);
    u.maxwin = PICKUP_WINDOW;
    u.ack = end;
    u.wscale = MAX_WSCALE;
    u.flags = dir_flags::UNSURE;
    enter::<F>(key, flow, settings, event::FLOW_PICKED_UP);
}

/// Whether this packet belongs to a live flow as its reply, arriving on a NIC of
/// `nic_role`; moves the flow when the packet fits. `pick_up`: when the packet is the
/// Edge's (the caller checked the NIC), the rows it is the reply of, else 0; if its
/// flow is not in the flow table and it [`may_pick_up`], the flow is picked up (as
/// the lowest of those rows') and the packet is its reply. (The row is worked out
/// only then: a reply that finds its flow pays nothing for it.)
#[inline(always)]
pub(crate) fn reply(p: &Packet, nic_role: u32, pick_up: u64, settings: &Settings, clock: &mut Clock) -> bool {
    if p.family == family::V4 { reply_in::<V4>(p, nic_role, pick_up, settings, clock) } else { reply_in::<V6>(p, nic_role, pick_up, settings, clock) }
}

#[inline(always)]
fn reply_in<F: Family>(p: &Packet, nic_role: u32, pick_up: u64, settings: &Settings, clock: &mut Clock) -> bool {
    let key = F::key(p, true);
    let bit = role::bit(nic_role);
    if p.proto == ipproto::UDP {
        let Some(flow) = live::<F>(F::UDP_FLOWS, key, settings, clock, event::UDP_EXPIRED) else {
            if pick_up == 0 || !may_pick_up(p, settings) {
                return false;
            }
            let row = crate::rules::first(pick_up);
            // Opened by a partner through the peer node: bound to the NIC its next
            // datagram arrives on.
            let Some(flow) = new_flow(clock.now(), flow_state::ESTABLISHED, row, bit, Flow::UNBOUND) else {
                return false;
            };
            flow.origin = origin::PICKED_UP;
            bump(if F::UDP_FLOWS.insert(key, flow, 0).is_ok() { event::UDP_PICKED_UP } else { event::UDP_INSERT_FAILED });
            return true;
        };
        if flow.reply_roles & bit == 0 {
            return false;
        }
        flow.last_seen_ns = clock.now();
        return true;
    }
    if let Some(flow) = live::<F>(F::FLOWS, key, settings, clock, event::FLOW_EXPIRED) {
        if flow.reply_roles & bit == 0 {
            return false;
        }
        if segment(p, &mut flow.state, &mut flow.responder, &mut flow.opener) == Seg::Ends {
            close::<F>(key, flow, settings);
        } else {
            flow.last_seen_ns = clock.now();
        }
        return true;
    }
    if pick_up != 0 && may_pick_up(p, settings) {
        let row = crate::rules::first(pick_up);
        // The Edge answering a connection this node never saw open (a partner opened
        // it through the peer node): bound to the NIC the partner's next segment
        // that fits arrives on.
        pick_up_tcp::<F>(key, p, row, bit, Flow::UNBOUND, false, settings, clock);
        return true;
    }
    // Before the handshake completes, nothing but the SYN-ACK and an RST crosses
    // back: anything else need not look for a handshake.
    if !has(p, tcp_flags::RST) && !has(p, tcp_flags::SYN | tcp_flags::ACK) {
        return false;
    }
    // An answer from the Edge's side belongs to a handshake opened from outside.
    let e = if nic_role == role::EDGE { &F::FROM_OUTSIDE } else { &F::FROM_TRUSTED };
    let Some(embryo) = live::<F>(e.table, key, settings, clock, e.expired) else {
        return false;
    };
    if embryo.reply_roles & bit == 0 {
        return false;
    }
    // Only an answer that acknowledges the SYN belongs to this handshake.
    let acks_syn = has(p, tcp_flags::ACK) && p.ack_seq == embryo.opener.end;
    if has(p, tcp_flags::RST) {
        if acks_syn {
            remove(e.table, key, e.closed);
        }
        return true;
    }
    if !has(p, tcp_flags::SYN) || !acks_syn {
        return true;
    }
    if embryo.state == flow_state::SYN_RECV {
        // A retransmitted SYN-ACK refreshes; one with another ISN is ignored.
        if seq_end(p) == embryo.responder.end {
            embryo.last_seen_ns = clock.now();
        }
        return true;
    }
    embryo.state = flow_state::SYN_RECV;
    embryo.last_seen_ns = clock.now();
    embryo.responder.end = seq_end(p);
    embryo.responder.ack = p.ack_seq;
    embryo.responder.maxwin = u32::from(p.window);
    embryo.opener.maxend = p.ack_seq.wrapping_add(u32::from(p.window));
    embryo.responder.maxend = seq_end(p).wrapping_add(embryo.opener.maxwin);
    if p.wscale != NO_WSCALE {
        embryo.responder.wscale = p.wscale;
        embryo.responder.flags = dir_flags::WSCALE;
    }
    true
}

/// Whether the ICMP error being judged quotes a packet of a live flow, in either
/// direction (the quote's tuple is in `QUOTE`).
#[inline(always)]
pub(crate) fn related(p: &Packet, settings: &Settings, clock: &mut Clock) -> bool {
    let Some(q) = QUOTE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch slot, written by the parser for this packet.
    let forward = unsafe { &mut *q };
    let now = clock.now();
    let udp = forward.proto == ipproto::UDP;
    if forward.family == family::V4 {
        let k = p.key4();
        *k = FlowKey4::narrow(forward);
        related_in::<V4>(k, udp, settings, now)
    } else {
        related_in::<V6>(forward, udp, settings, now)
    }
}

/// Whether `forward` or its other direction (swapped in place: the key is scratch)
/// names a live flow of the family.
#[inline(always)]
fn related_in<F: Family>(forward: &mut F::Key, udp: bool, settings: &Settings, now: u64) -> bool {
    let found = |key: &F::Key| {
        if udp {
            alive(F::UDP_FLOWS, key, settings, true, now)
        } else {
            alive(F::FLOWS, key, settings, false, now)
                || alive(F::FROM_OUTSIDE.table, key, settings, false, now)
                || alive(F::FROM_TRUSTED.table, key, settings, false, now)
        }
    };
    if found(forward) {
        return true;
    }
    F::swap(forward);
    found(forward)
}

/// Whether the table holds a live entry for `key`; reads only.
#[inline(always)]
fn alive<K>(table: &LruHashMap<K, Flow>, key: &K, settings: &Settings, udp: bool, now: u64) -> bool {
    // SAFETY: as in `live`; the entry is only read.
    table.get_ptr(key).is_some_and(|flow| !expired(unsafe { &*flow }, settings, udp, now))
}
