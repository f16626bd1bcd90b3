//! The floor of every benchmark, not part of the filter: the cheapest XDP programs
//! there are, returning one action without looking at the frame. Whatever a filter
//! costs above these is the filter's own cost; what these cost is the kernel's
//! (BPF_PROG_TEST_RUN's loop, or the veth driver's receive path).
//!
//! Beside them, the floor of a tracked flow: the cheapest program that makes one
//! lookup in a kernel hash table of flows (an LRU hash, as edge-filter's state
//! tables are) and finds its entry, for keys of the sizes edge-filter's tables have.
//! What these cost over the floor is what the kernel's lookup costs, whoever calls it.
#![no_std]
#![no_main]

// The panic handler both programs link.
use edge_filter_test_ebpf as _;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::LruHashMap,
    programs::XdpContext,
};

/// Passes every frame.
#[xdp]
pub(crate) fn floor_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Drops every frame.
#[xdp]
pub(crate) fn floor_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Tables of the sizes of edge-filter's flow keys: 12 bytes (an IPv4 flow), 40 bytes
/// (an IPv6 flow). The benchmark writes the zero key's entry in each.
#[map]
static LOOKUP12: LruHashMap<[u8; 12], u64> = LruHashMap::with_max_entries(LOOKUP_ENTRIES, 0);
#[map]
static LOOKUP40: LruHashMap<[u8; 40], u64> = LruHashMap::with_max_entries(LOOKUP_ENTRIES, 0);

/// As many entries as edge-filter's flow table has by default.
const LOOKUP_ENTRIES: u32 = 262_144;

/// Looks up the zero key in `LOOKUP12`: passes when it is found, else drops.
#[xdp]
pub(crate) fn floor_lookup12(_ctx: XdpContext) -> u32 {
    found(&LOOKUP12, &[0; 12])
}

/// Looks up the zero key in `LOOKUP40`: passes when it is found, else drops.
#[xdp]
pub(crate) fn floor_lookup40(_ctx: XdpContext) -> u32 {
    found(&LOOKUP40, &[0; 40])
}

#[inline(always)]
fn found<K>(table: &LruHashMap<K, u64>, key: &K) -> u32 {
    // SAFETY: the entry is not read, only whether there is one.
    if unsafe { table.get(key) }.is_some() { xdp_action::XDP_PASS } else { xdp_action::XDP_DROP }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
/// "Dual MIT/GPL": the kernel takes it as GPL-compatible (the helpers the program
/// calls need that), and it is the crate's MIT licence beside it.
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
