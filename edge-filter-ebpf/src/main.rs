//! edge-filter's kernel side: one XDP program for every NIC it is attached to.
//!
//! The entry point maps the one verdict the policy returns to one action and one
//! counter. `XDP_ABORTED` is never returned: it is not a policy verdict.
//!
//! - [`parse`]: from a frame to the facts the policy judges;
//! - [`policy`]: the vendor table, rule by rule, and the order of judgement;
//! - [`state`]: the flow table that lets replies of allowed connections back in;
//! - [`counters`]: per-CPU packet and byte counters;
//! - [`maps`]: the maps userspace fills and reads.
#![no_std]
#![no_main]

mod counters;
mod maps;
mod parse;
mod policy;
mod state;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use edge_filter_common::{Settings, flags, verdict};

use crate::{maps::SETTINGS, parse::Frame};

#[xdp]
pub fn edge_filter(ctx: XdpContext) -> u32 {
    let frame = Frame::new(&ctx);
    // Entry 0 of an array map always exists; userspace writes it before it attaches.
    let settings = SETTINGS.get(0).copied().unwrap_or(Settings::DEFAULT);
    let (slot, mut v) = policy::judge(&ctx, &frame, &settings);
    if verdict::is_drop(v) && settings.flags & flags::DRY_RUN != 0 {
        v += verdict::DRY_RUN_OFFSET;
    }
    counters::count_verdict(slot, v, frame.len() as u64);
    if verdict::is_drop(v) { xdp_action::XDP_DROP } else { xdp_action::XDP_PASS }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach a panic, so this is dead code.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
