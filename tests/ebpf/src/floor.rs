//! The floor of every benchmark, not part of the filter: the cheapest XDP programs
//! there are, returning one action without looking at the frame. Whatever a filter
//! costs above these is the filter's own cost; what these cost is the kernel's
//! (BPF_PROG_TEST_RUN's loop, or the veth driver's receive path).
#![no_std]
#![no_main]

// The panic handler both programs link.
use edge_filter_test_ebpf as _;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

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

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
/// "Dual MIT/GPL": the kernel takes it as GPL-compatible (the helpers the program
/// calls need that), and it is the crate's MIT licence beside it.
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
