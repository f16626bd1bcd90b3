//! A traffic generator for tests and benchmarks, not part of the filter: run with
//! BPF_PROG_TEST_RUN in live-frames mode (`BPF_F_TEST_XDP_LIVE_FRAMES`) on a veth, it
//! transmits its input frame again and again (`XDP_TX`) at millions of frames per
//! second, each one varied so that floods come from many sources.
//!
//! Contract: the input is an Ethernet + IPv4 + TCP frame without options or VLAN tags.
//! Each run adds a per-CPU sequence number to the IPv4 source address's last byte and
//! to the TCP source port, and updates both checksums incrementally (RFC 1624), so
//! every frame is valid. Anything else is transmitted unchanged.
#![no_std]
#![no_main]

// The panic handler both programs link.
use edge_filter_test_ebpf as _;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};

/// Index 0 -> frames generated on this CPU.
#[map]
static GEN_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

const ETH_LEN: usize = 14;
const IP_SRC_LAST: usize = ETH_LEN + 15;
const IP_CSUM: usize = ETH_LEN + 10;
const TCP_SPORT: usize = ETH_LEN + 20;
const TCP_CSUM: usize = ETH_LEN + 20 + 16;

/// RFC 1624 eqn. 3: the checksum after a 16-bit word changed from `old` to `new`.
#[inline(always)]
fn csum_update(csum: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!csum) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[xdp]
pub(crate) fn traffic_gen(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + TCP_CSUM + 2 > end {
        return xdp_action::XDP_TX;
    }
    let Some(seq) = GEN_SEQ.get_ptr_mut(0) else {
        return xdp_action::XDP_TX;
    };
    // SAFETY: a per-CPU slot, written by this CPU only.
    let n = unsafe {
        *seq = (*seq).wrapping_add(1);
        *seq
    };
    let p = start as *mut u8;
    // SAFETY: every offset below is under TCP_CSUM + 2, checked against data_end.
    unsafe {
        let word = |off: usize| u16::from_be_bytes([*p.add(off), *p.add(off + 1)]);
        let put = |off: usize, v: u16| {
            let [a, b] = v.to_be_bytes();
            *p.add(off) = a;
            *p.add(off + 1) = b;
        };
        // Source address: its last byte walks 128..255, the port through 1024..65535.
        let src_word_off = IP_SRC_LAST - 1;
        let old_src = word(src_word_off);
        let new_src = (old_src & 0xff00) | (128 + (n % 128) as u16);
        let old_port = word(TCP_SPORT);
        let new_port = 1024 + ((n / 128) % 64512) as u16;
        put(src_word_off, new_src);
        put(TCP_SPORT, new_port);
        put(IP_CSUM, csum_update(word(IP_CSUM), old_src, new_src));
        // The TCP checksum covers the pseudo-header's source address and the port.
        let tcp = csum_update(word(TCP_CSUM), old_src, new_src);
        put(TCP_CSUM, csum_update(tcp, old_port, new_port));
    }
    xdp_action::XDP_TX
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
/// "Dual MIT/GPL": the kernel takes it as GPL-compatible (the helpers the program
/// calls need that), and it is the crate's MIT licence beside it.
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
