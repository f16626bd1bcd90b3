//! edge-filter's kernel side: one XDP program for every NIC it is attached to.
//!
//! The entry point maps the one verdict the policy returns to one action and one
//! counter. `XDP_ABORTED` is never returned: it is not a policy verdict.
//!
//! The object carries the program twice, as the same code: [`edge_filter`] is
//! multi-buffer aware (`xdp.frags`, kernel 5.18+), so it attaches to NICs with jumbo
//! MTUs and counts a frame's whole length; [`edge_filter_lin`] is for older kernels,
//! which know neither the flag nor `bpf_xdp_get_buff_len`. Headers are always in the
//! first buffer, so both judge alike. The loader picks one by kernel version.
//!
//! - [`parse`]: from a frame to the facts the policy judges;
//! - [`policy`]: the order of judgement;
//! - [`rules`]: which rows of the rule table a packet opens or answers;
//! - [`sets`]: which address sets an address is in;
//! - [`state`]: the flow tables that let replies of allowed connections back in;
//! - [`egress`]: the TC egress program of host mode, which records the flows the
//!   machine itself opens;
//! - [`clock`]: the monotonic clock, read mostly without a helper call;
//! - [`counters`]: per-CPU packet and byte counters;
//! - [`droplog`]: rate-limited reports of dropped packets;
//! - [`maps`]: the maps userspace fills and reads.
#![no_std]
#![no_main]
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys are passed by reference so each lookup does not copy the key again on a 512-byte stack"
)]

mod clock;
mod counters;
mod droplog;
mod egress;
mod maps;
mod mem;
mod parse;
mod policy;
mod rules;
mod sets;
mod state;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use edge_filter_common::{flags, verdict};

use crate::{maps::CONFIG, parse::Frame};

/// The filter for kernels with multi-buffer XDP. (Inlined into the entry point the
/// macro wraps it in, as the other two: a BPF-to-BPF call per packet otherwise.)
#[xdp(frags)]
#[inline(always)]
pub(crate) fn edge_filter(ctx: XdpContext) -> u32 {
    filter(&ctx, &Frame::multi_buffer(&ctx))
}

/// The filter for kernels before 5.18: frames are one buffer.
#[xdp]
#[inline(always)]
pub(crate) fn edge_filter_lin(ctx: XdpContext) -> u32 {
    filter(&ctx, &Frame::linear(&ctx))
}

/// Host mode: record the flows this machine opens or answers, at TC egress of a
/// `host` NIC. Never drops: egress is the machine's own traffic.
#[classifier]
#[inline(always)]
pub(crate) fn edge_filter_eg(ctx: TcContext) -> i32 {
    egress::record(&ctx);
    // TC_ACT_OK
    0
}

/// Judge, count, act.
#[inline(always)]
fn filter(ctx: &XdpContext, frame: &Frame) -> u32 {
    // Entry 0 of an array map always exists (userspace writes it before it attaches);
    // read in place, not copied to the stack.
    let Some(config) = CONFIG.get(0) else {
        return xdp_action::XDP_PASS;
    };
    let settings = &config.settings;
    let (slot, mut v) = policy::judge(ctx, frame, config);
    // Known once the headers are parsed ([`Frame`]).
    let bytes = frame.len() as u64;
    let mut action = xdp_action::XDP_PASS;
    if verdict::is_drop(v) {
        // Tested here too, so that a drop without the log makes no call.
        if settings.flags & flags::DROP_LOG != 0 {
            droplog::report(ctx, settings, ctx.ingress_ifindex() as u32, v);
        }
        if settings.flags & flags::DRY_RUN != 0 {
            v += verdict::DRY_RUN_OFFSET;
        } else {
            action = xdp_action::XDP_DROP;
        }
    }
    counters::count_verdict(slot, v, bytes);
    action
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // The verifier rejects any program that could reach a panic, so this is dead code.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
/// "Dual MIT/GPL": the kernel takes it as GPL-compatible (the helpers the program
/// calls need that), and it is the crate's MIT licence beside it.
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
