//! The parser: from a frame to the facts the policy judges.
//!
//! One bounds-checked accessor ([`Frame::read`]) and a cursor (a byte offset), one
//! function per layer: Ethernet with up to [`MAX_VLAN_TAGS`] 802.1Q/802.1ad tags,
//! IPv4 by its real header length, IPv6 with its extension chain walked in a bounded
//! loop, then the upper-layer header.
//!
//! Contract:
//! - Nothing outside the first buffer is read, and nothing beyond the IP packet's own
//!   length is taken for an upper-layer header: Ethernet padding is not a TCP header.
//!   Headers that reach past the first buffer of a multi-buffer frame count as cut.
//! - Anything that cannot be judged is [`Malformed`]: a truncated IP header, IPv4 with
//!   IHL < 5 or a total length beyond the frame, an IPv6 payload length beyond the
//!   frame, an extension chain that runs past the packet or is longer than
//!   [`MAX_IPV6_EXT`], a third VLAN tag (the inner packet would go unjudged).
//! - The upper-layer header is read here, once; [`Packet::l4`] says whether it is
//!   whole. A non-first fragment has none ([`L4_ABSENT`]), so no payload byte is
//!   ever taken for a port.
//! - An IPv6 first fragment that does not hold the whole header chain up to and
//!   including the upper-layer header is [`Parsed::IncompleteFirstFragment`]
//!   (RFC 7112).
//! - TCP: ports, sequence and acknowledgement numbers, flags, window, and on a SYN the
//!   window scale option (options walked in a bounded loop). UDP: ports.
//! - An ICMP error (v4 types 3, 11, 12; ICMPv6 types 1-4) carries the tuple of the
//!   packet it quotes in [`Packet::inner`], when the quote holds an IP header of the
//!   same family (IPv6 without extension headers) and the first four bytes of a TCP
//!   or UDP header; otherwise `inner.proto` is 0 and the error relates to nothing.
//!
//! Verifier: the policy sees only the extracted [`Packet`], never an offset. Offsets
//! differ on every parse path (VLAN tags, IHL, each extension header); were they
//! still live after parsing, the verifier would walk the whole policy once per path
//! and run out of its instruction budget.

use core::{
    cell::Cell,
    cell::UnsafeCell,
    mem::{align_of, offset_of, size_of},
    ptr,
};

use aya_ebpf::{
    bindings::xdp_md,
    helpers::generated::bpf_xdp_get_buff_len,
    macros::map,
    maps::PerCpuArray,
    programs::{TcContext, XdpContext},
};
use edge_filter_common::{FlowKey, FlowKey4, family, ipproto, tcp_flags};

use crate::mem;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    vlan::VlanHdr,
};

/// 802.1Q / 802.1ad tags skipped before the inner packet is judged.
pub(crate) const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked; a longer chain is malformed. RFC 8200 §4.1 orders
/// at most six (hop-by-hop, destination, routing, fragment, AH, destination).
pub(crate) const MAX_IPV6_EXT: usize = 8;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// [`Packet::wscale`] of a segment without the option.
pub(crate) const NO_WSCALE: u8 = 0xff;

/// Values of [`Packet::frag`].
pub(crate) const FRAG_NONE: u8 = 0;
/// Offset 0, more fragments follow: the upper-layer header may be here.
pub(crate) const FRAG_FIRST: u8 = 1;
/// Offset > 0: no upper-layer header.
pub(crate) const FRAG_LATER: u8 = 2;

/// Values of [`Packet::l4`].
/// The upper-layer header the policy reads is whole (or the protocol has none it reads).
pub(crate) const L4_WHOLE: u8 = 0;
/// The upper-layer header is cut short or its length field points past the packet.
pub(crate) const L4_TRUNCATED: u8 = 1;
/// A non-first fragment: there is no upper-layer header.
pub(crate) const L4_ABSENT: u8 = 2;

/// Options of a SYN walked looking for the window scale; Linux and Windows put it
/// within the first six.
pub(crate) const MAX_TCP_OPTIONS: usize = 12;
/// RFC 7323 §2.3: a shift above 14 is taken as 14.
const MAX_WSCALE: u8 = 14;

/// ICMP error types whose quote may relate them to a flow.
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETERPROB: u8 = 12;
/// ICMPv6 errors: destination unreachable, packet too big, time exceeded, parameter
/// problem.
const ICMPV6_ERROR_MAX: u8 = 4;

/// The frame cannot be judged.
pub(crate) struct Malformed;

/// The packet's bounds, read once from the context.
///
/// A multi-buffer frame is longer than the buffer the program can read: headers are
/// read from the first buffer (`start..end`), lengths in headers are checked against
/// the whole frame ([`Frame::holds`]). The whole length costs a helper call
/// (`bpf_xdp_get_buff_len`), so it is asked only when a header claims more than the
/// first buffer holds, which a frame in one buffer never does: most frames make no
/// call. The frame's length is then the first buffer's (a frame whose IP packet fits
/// its first buffer and that still has fragments carries only padding in them).
pub(crate) struct Frame {
    start: usize,
    end: usize,
    /// The whole length when known (`whole` is null), else the first buffer's.
    len: Cell<usize>,
    /// The multi-buffer context to ask for the whole length; null once asked, and for
    /// frames in one buffer.
    whole: Cell<*mut xdp_md>,
}

impl Frame {
    /// A frame of the single-buffer program: all of it is in `ctx`'s buffer.
    #[inline(always)]
    pub(crate) fn linear(ctx: &XdpContext) -> Self {
        Self { start: ctx.data(), end: ctx.data_end(), len: Cell::new(ctx.data_end() - ctx.data()), whole: Cell::new(ptr::null_mut()) }
    }

    /// A frame of the multi-buffer program: its first buffer in `ctx`, perhaps more.
    #[inline(always)]
    pub(crate) fn multi_buffer(ctx: &XdpContext) -> Self {
        Self { start: ctx.data(), end: ctx.data_end(), len: Cell::new(ctx.data_end() - ctx.data()), whole: Cell::new(ctx.ctx) }
    }

    /// A socket buffer at TC: headers in its linear part, `skb->len` in all.
    #[inline(always)]
    pub(crate) fn from_skb(ctx: &TcContext) -> Self {
        Self { start: ctx.data(), end: ctx.data_end(), len: Cell::new(ctx.len() as usize), whole: Cell::new(ptr::null_mut()) }
    }

    /// Bytes in the frame, as far as they are known ([`Frame`]).
    #[inline(always)]
    pub(crate) fn len(&self) -> usize {
        self.len.get()
    }

    /// Whether the frame is at least `n` bytes long, in all its buffers.
    #[inline(always)]
    fn holds(&self, n: usize) -> bool {
        if n <= self.len.get() {
            return true;
        }
        let ctx = self.whole.replace(ptr::null_mut());
        if ctx.is_null() {
            return false;
        }
        // SAFETY: the context the kernel passed the program, valid for its run.
        let whole = unsafe { bpf_xdp_get_buff_len(ctx) } as usize;
        self.len.set(whole);
        n <= whole
    }

    /// A copy of the `T` at `off`, if all of it lies inside the frame: for what lies
    /// after the IP header, once the IP length is checked.
    ///
    /// Verifier: the comparison must stay between packet pointers (`start + off +
    /// size` against `end`) so the verifier learns the range it proves; every caller
    /// keeps `off` bounded (constants, masked lengths) so the sum cannot wrap. The
    /// offset goes through `black_box` because LLVM otherwise proves the check
    /// redundant from the IP length checks (which compare scalars the verifier does
    /// not relate to the packet) and deletes it.
    #[inline(always)]
    fn read<T: Copy>(&self, off: usize) -> Result<T, Malformed> {
        self.copy_at(core::hint::black_box(off))
    }

    /// [`Frame::read`] for the Ethernet, VLAN and IP headers: read before any length
    /// is compared, so there is nothing LLVM could prove the check redundant from, and
    /// the offset needs no `black_box` (a stack store and load each).
    #[inline(always)]
    fn header<T: Copy>(&self, off: usize) -> Result<T, Malformed> {
        self.copy_at(off)
    }

    /// The `T` at `off` in place, if all of it lies inside the frame: its fields are
    /// loaded where they are used, not all at once (as a copy's are) to wait in
    /// registers and on the stack. `T` is byte-aligned, as headers in a frame are.
    #[inline(always)]
    fn view<T>(&self, off: usize) -> Option<&T> {
        const { assert!(align_of::<T>() == 1, "a view into the frame must not assume alignment") };
        let at = self.inside::<T>(off)?;
        // SAFETY: `at..at + size_of::<T>()` lies inside the packet, which outlives the
        // frame; `T` has alignment 1 and is plain bytes.
        Some(unsafe { &*(at as *const T) })
    }

    #[inline(always)]
    fn copy_at<T: Copy>(&self, off: usize) -> Result<T, Malformed> {
        let at = self.inside::<T>(off).ok_or(Malformed)?;
        // SAFETY: `at..at + size_of::<T>()` was just checked to lie inside the packet,
        // and `T` is plain bytes; the read is unaligned because headers are.
        Ok(unsafe { ptr::read_unaligned(at as *const T) })
    }

    /// The address of a `T` at `off`, if all of it lies inside the frame: the one
    /// bounds check every read makes.
    #[inline(always)]
    fn inside<T>(&self, off: usize) -> Option<usize> {
        let at = self.start + off;
        (at + size_of::<T>() <= self.end).then_some(at)
    }
}

/// What the frame carries.
pub(crate) enum Parsed {
    Arp,
    /// Neither IP nor ARP: not the policy's business.
    Other,
    /// An IP packet, whose facts are in the caller's [`Packet`].
    Ip,
    /// An IPv6 first fragment without the whole header chain (RFC 7112).
    IncompleteFirstFragment,
}

/// Slot of [`PACKET`] the XDP program uses.
pub(crate) const XDP_SLOT: u32 = 0;
/// Slot of [`PACKET`] the TC egress program uses.
pub(crate) const TC_SLOT: u32 = 1;

/// Index [`XDP_SLOT`] or [`TC_SLOT`] -> the facts of the packet being judged on this
/// CPU (see [`Packet::scratch`]).
#[map]
static PACKET: PerCpuArray<Packet> = PerCpuArray::with_max_entries(2, 0);

/// Index 0 -> the tuple of the packet the ICMP error being judged on this CPU quotes,
/// in the quoted packet's direction (family and protocol included). Scratch space:
/// it keeps 40 bytes off the stack, which the verifier's 512-byte limit needs.
#[map]
pub(crate) static QUOTE: PerCpuArray<FlowKey> = PerCpuArray::with_max_entries(1, 0);

/// The facts of an IP packet, either family. IPv4 addresses sit in the first four
/// bytes. Port fields are zero unless `proto` is TCP or UDP and `l4` is whole; TCP
/// fields are zero unless `proto` is TCP.
///
/// Aligned to 8 bytes, addresses first, so that it is built and copied a word at a
/// time (see `FlowKey`'s alignment for why that matters to the verifier).
#[repr(C, align(8))]
pub(crate) struct Packet {
    /// The state code's flow key for this packet (`state::key`): scratch space in the
    /// same per-CPU value, so that a passing packet finds it without a lookup of its
    /// own. Written only through [`Packet::key`]; nothing here reads it.
    key: UnsafeCell<FlowKey>,
    /// The same for an IPv4 flow ([`Packet::key4`]).
    key4: UnsafeCell<FlowKey4>,
    _key_pad: [u8; 4],
    /// Network order.
    pub src: [u8; 16],
    /// Network order.
    pub dst: [u8; 16],
    pub family: u8,
    /// Upper-layer protocol, after the IPv6 extension chain.
    pub proto: u8,
    /// [`FRAG_NONE`], [`FRAG_FIRST`] or [`FRAG_LATER`].
    pub frag: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub hop_limit: u8,
    /// [`L4_WHOLE`], [`L4_TRUNCATED`] or [`L4_ABSENT`].
    pub l4: u8,
    /// [`tcp_flags`] bits.
    pub tcp_flags: u8,
    /// ICMP or ICMPv6 type.
    pub icmp_type: u8,
    pub sport_be: u16,
    pub dport_be: u16,
    /// TCP sequence and acknowledgement numbers, host order.
    pub seq: u32,
    pub ack_seq: u32,
    /// TCP payload bytes (what follows the TCP header inside the IP packet).
    pub tcp_payload: u16,
    /// TCP window field, unscaled.
    pub window: u16,
    /// A SYN's window scale option (capped at 14), or [`NO_WSCALE`].
    pub wscale: u8,
    /// ICMP errors: the protocol (TCP or UDP) of the quoted packet, whose tuple is in
    /// [`QUOTE`]; 0 when the message is not an error or its quote is unusable.
    pub inner: u8,
    /// 1 when the frame's Ethernet destination is a group address (broadcast or
    /// multicast).
    pub to_group: u8,
}

const _: () = assert!(
    size_of::<Packet>().is_multiple_of(8) && offset_of!(Packet, family) == size_of::<FlowKey>() + 16 + 32,
    "the facts after the key and the addresses are zeroed word by word"
);

// SAFETY: a `Packet` lives only in `PACKET`, a per-CPU slot that one program run uses
// at a time (see `Packet::scratch`); its key is never shared across CPUs or runs.
unsafe impl Sync for Packet {}

impl Packet {
    /// This CPU's packet, zeroed but for its key and addresses, for [`parse`] to fill.
    /// The addresses are left as the last packet had them: the parser writes both
    /// before it returns [`Parsed::Ip`] or [`Parsed::IncompleteFirstFragment`], and
    /// nothing reads them of any other frame. The key is written whole before use.
    ///
    /// Verifier: the facts live in a map value, not on the stack. The verifier knows
    /// nothing of what a map value holds, so the many parse paths (VLAN tags, IPv4
    /// options, each IPv6 extension chain, each TCP option layout) end in one state
    /// instead of one per combination of constants the parser wrote; on the stack,
    /// those combinations multiplied the walks of the policy and the state code past
    /// the million-instruction limit of 5.10 and 6.1. It also keeps 64 bytes off the
    /// 512-byte stack. The slot is this program's alone while it runs: XDP runs in
    /// softirq context, and TC egress (the other user, slot 1) with bottom halves off.
    #[inline(always)]
    pub(crate) fn scratch<'a>(slot: u32) -> Option<&'a mut Self> {
        let p = PACKET.get_ptr_mut(slot)?;
        const FACTS: usize = offset_of!(Packet, family);
        // SAFETY: a per-CPU slot, valid for this run and used by this run only (see
        // above); `Packet` is plain integers and byte arrays, aligned to 8 and a
        // multiple of 8 long, its key and addresses first, so zeroing the rest word by
        // word makes every field valid.
        unsafe {
            mem::zero(p.cast::<u8>().add(FACTS), (size_of::<Self>() - FACTS) / 8);
            Some(&mut *p)
        }
    }

    /// The flow key's scratch space: the caller fills it whole before it reads it.
    #[inline(always)]
    #[expect(clippy::mut_from_ref, reason = "interior scratch space of a per-CPU slot, handed out to one user at a time")]
    pub(crate) fn key(&self) -> &mut FlowKey {
        // SAFETY: the key is written only through this method, by the state code, which
        // holds one reference to it at a time per packet (`state::key`).
        unsafe { &mut *self.key.get() }
    }

    /// [`Packet::key`] for IPv4 flows.
    #[inline(always)]
    #[expect(clippy::mut_from_ref, reason = "as `key`")]
    pub(crate) fn key4(&self) -> &mut FlowKey4 {
        // SAFETY: as in `key`.
        unsafe { &mut *self.key4.get() }
    }

    /// The facts of an IP header; not a fragment, no upper layer read yet. The
    /// addresses are the caller's to set.
    #[inline(always)]
    fn reset(&mut self, family: u8, proto: u8, hop_limit: u8) {
        self.family = family;
        self.proto = proto;
        self.frag = FRAG_NONE;
        self.hop_limit = hop_limit;
        self.l4 = L4_ABSENT;
        self.wscale = NO_WSCALE;
    }
}

/// Parse the frame down to the upper-layer header.
#[inline(always)]
pub(crate) fn parse(frame: &Frame, p: &mut Packet) -> Result<Parsed, Malformed> {
    let eth: EthHdr = frame.header(0)?;
    p.to_group = eth.dst_addr[0] & 1;
    let mut ether_type = u16::from_be(eth.ether_type);
    if (ether_type == ETH_P_IPV4 && fast_ipv4(frame, p)) || (ether_type == ETH_P_IPV6 && fast_ipv6(frame, p)) {
        return Ok(Parsed::Ip);
    }
    let mut off = EthHdr::LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let tag: VlanHdr = frame.header(off)?;
        ether_type = u16::from_be(tag.ether_type);
        off += VlanHdr::LEN;
    }
    match ether_type {
        ETH_P_IPV4 => ipv4(frame, off, p).map(|()| Parsed::Ip),
        ETH_P_IPV6 => ipv6(frame, off, p),
        ETH_P_ARP => Ok(Parsed::Arp),
        // A third tag: the packet inside would pass unjudged.
        ETH_P_8021Q | ETH_P_8021AD => Err(Malformed),
        _ => Ok(Parsed::Other),
    }
}

#[inline(always)]
fn ipv4(frame: &Frame, off: usize, p: &mut Packet) -> Result<(), Malformed> {
    let hdr: Ipv4Hdr = frame.header(off)?;
    let ihl = usize::from(hdr.ihl());
    let total = usize::from(hdr.tot_len());
    if hdr.version() != 4 || ihl < Ipv4Hdr::LEN || total < ihl {
        return Err(Malformed);
    }
    let frag = if hdr.frag_offset() != 0 {
        FRAG_LATER
    } else if hdr.frag_flags() & 0b001 != 0 {
        FRAG_FIRST
    } else {
        FRAG_NONE
    };
    // Written before `holds`, which may call a helper: the header's fields go straight
    // from the packet to `p` instead of waiting on the stack across the call.
    ipv4_facts(p, &hdr);
    p.frag = frag;
    if !frame.holds(off + total) {
        return Err(Malformed);
    }
    if frag != FRAG_LATER {
        upper_layer(frame, p, off + ihl, off + total);
    }
    Ok(())
}

/// The facts of an IPv4 header whose version and length were checked.
#[inline(always)]
fn ipv4_facts(p: &mut Packet, hdr: &Ipv4Hdr) {
    p.reset(family::V4, hdr.proto, hdr.ttl);
    mem::set_addr4(&mut p.src, hdr.src_addr);
    mem::set_addr4(&mut p.dst, hdr.dst_addr);
}

/// The facts of an IPv6 header whose version and length were checked.
#[inline(always)]
fn ipv6_facts(p: &mut Packet, hdr: &Ipv6Hdr) {
    p.reset(family::V6, hdr.next_hdr, hdr.hop_limit);
    mem::set_addr(&mut p.src, &hdr.src_addr);
    mem::set_addr(&mut p.dst, &hdr.dst_addr);
}

/// The headers of the frames a firewall mostly sees, at fixed offsets after untagged
/// Ethernet: the IP header without options or extension headers, and a TCP header
/// (whose first 20 bytes also hold a UDP header and what follows it).
#[repr(C)]
struct Fast<Ip> {
    ip: Ip,
    l4: TcpHdr,
}

/// The fast path of an untagged IPv4 frame: an IPv4 header of 20 bytes, not a
/// fragment, carrying a whole TCP or UDP header, all in the first buffer; or a
/// fragment other than the first, which carries none. Every field
/// is read at a constant offset after one bounds check, where the general parse
/// computes offsets and checks each header. For such a frame, writes the facts the
/// general parse would and answers true; for any other, writes nothing and answers
/// false.
#[inline(always)]
fn fast_ipv4(frame: &Frame, p: &mut Packet) -> bool {
    const L4_AT: usize = EthHdr::LEN + Ipv4Hdr::LEN;
    let Some(f) = frame.view::<Fast<Ipv4Hdr>>(EthHdr::LEN) else {
        return false;
    };
    // Version 4, IHL 5.
    if f.ip.vihl != 0x45 {
        return false;
    }
    let total = usize::from(u16::from_be_bytes(f.ip.tot_len));
    let end = EthHdr::LEN + total;
    // More fragments or an offset (the reserved and don't-fragment flags aside).
    let frags = u16::from_be_bytes(f.ip.frags);
    if frags & 0x3fff != 0 {
        // A first fragment, whose upper-layer header may be cut, is the general
        // parse's; one other than the first has no upper-layer header to read.
        if frags & 0x1fff == 0 || total < Ipv4Hdr::LEN || end > frame.len() {
            return false;
        }
        ipv4_facts(p, &f.ip);
        p.frag = FRAG_LATER;
        return true;
    }
    let Some(tcp_len) = fast_l4_len(frame, f.ip.proto, &f.l4, L4_AT, end) else {
        return false;
    };
    ipv4_facts(p, &f.ip);
    fast_l4(frame, p, &f.l4, L4_AT, tcp_len, end);
    true
}

/// [`fast_ipv4`] for IPv6: no extension header before the TCP or UDP header.
#[inline(always)]
fn fast_ipv6(frame: &Frame, p: &mut Packet) -> bool {
    const L4_AT: usize = EthHdr::LEN + Ipv6Hdr::LEN;
    let Some(f) = frame.view::<Fast<Ipv6Hdr>>(EthHdr::LEN) else {
        return false;
    };
    if f.ip.version() != 6 {
        return false;
    }
    let end = L4_AT + usize::from(u16::from_be_bytes(f.ip.payload_len));
    let Some(tcp_len) = fast_l4_len(frame, f.ip.next_hdr, &f.l4, L4_AT, end) else {
        return false;
    };
    ipv6_facts(p, &f.ip);
    fast_l4(frame, p, &f.l4, L4_AT, tcp_len, end);
    true
}

/// Whether the fast paths take the upper layer at `l4`, the IP packet ending at `end`:
/// a whole TCP header (its length) or UDP header (0), the packet inside the first
/// buffer.
#[inline(always)]
fn fast_l4_len(frame: &Frame, proto: u8, hdr: &TcpHdr, l4: usize, end: usize) -> Option<usize> {
    if end > frame.len() {
        return None;
    }
    if proto == ipproto::TCP {
        let hdr_len = tcp_header_len(hdr);
        (hdr_len >= TcpHdr::LEN && l4 + hdr_len <= end).then_some(hdr_len)
    } else if proto == ipproto::UDP {
        (l4 + 8 <= end).then_some(0)
    } else {
        None
    }
}

/// The upper layer's facts of a frame [`fast_l4_len`] took, after the IP header's.
#[inline(always)]
fn fast_l4(frame: &Frame, p: &mut Packet, hdr: &TcpHdr, l4: usize, tcp_len: usize, end: usize) {
    if tcp_len == 0 {
        p.sport_be = u16::from_ne_bytes(hdr.source);
        p.dport_be = u16::from_ne_bytes(hdr.dest);
    } else {
        tcp_facts(frame, p, hdr, l4, tcp_len, end);
    }
    p.l4 = L4_WHOLE;
}

#[inline(always)]
fn ipv6(frame: &Frame, off: usize, p: &mut Packet) -> Result<Parsed, Malformed> {
    let hdr: Ipv6Hdr = frame.header(off)?;
    let end = off + Ipv6Hdr::LEN + usize::from(hdr.payload_len());
    if hdr.version() != 6 || !frame.holds(end) {
        return Err(Malformed);
    }
    ipv6_facts(p, &hdr);
    let mut l4 = off + Ipv6Hdr::LEN;
    // Bit 0: a fragment header with the M flag was seen (at offset 0).
    let mut more = 0u16;
    for _ in 0..MAX_IPV6_EXT {
        if !is_extension(p.proto) {
            break;
        }
        // Next header, length, and for the fragment header its offset and flags. Every
        // extension header is at least eight bytes, and they must lie inside the IP
        // packet: bytes past its end (Ethernet padding) are not a header.
        if l4 + 8 > end {
            return chain_cut(more);
        }
        let Ok(ext) = frame.read::<[u8; 4]>(l4) else {
            return chain_cut(more);
        };
        let len = if p.proto == ipproto::FRAGMENT {
            let offset_flags = u16::from_be_bytes([ext[2], ext[3]]);
            if offset_flags & !0b111 != 0 {
                // Non-first fragment: what follows is payload, never a header.
                p.proto = ext[0];
                p.frag = FRAG_LATER;
                return Ok(Parsed::Ip);
            }
            more |= offset_flags & 1;
            8
        } else if p.proto == ipproto::AH {
            // AH counts 4-byte units minus 2, the others 8-byte units minus 1.
            (usize::from(ext[1]) + 2) * 4
        } else {
            (usize::from(ext[1]) + 1) * 8
        };
        p.proto = ext[0];
        // Verifier: masking drops the lower bound the verifier tracks, so the states of
        // different header kinds converge; it never changes a real offset
        // (22 + 40 + 8 * 2048 < 2^15).
        l4 = (l4 + len) & 0x7fff;
        if l4 > end {
            return chain_cut(more);
        }
    }
    if is_extension(p.proto) {
        return Err(Malformed);
    }
    if more != 0 {
        p.frag = FRAG_FIRST;
    }
    upper_layer(frame, p, l4, end);
    if p.frag == FRAG_FIRST && p.l4 != L4_WHOLE {
        return Ok(Parsed::IncompleteFirstFragment);
    }
    Ok(Parsed::Ip)
}

#[inline(always)]
fn is_extension(proto: u8) -> bool {
    matches!(proto, ipproto::HOPOPTS | ipproto::ROUTING | ipproto::DSTOPTS | ipproto::AH | ipproto::FRAGMENT)
}

/// The extension chain runs past the packet: malformed, unless the packet is a first
/// fragment, which RFC 7112 says to drop as such.
#[inline(always)]
fn chain_cut(more: u16) -> Result<Parsed, Malformed> {
    if more != 0 { Ok(Parsed::IncompleteFirstFragment) } else { Err(Malformed) }
}

/// Read the upper-layer header at `l4`, which must end by `end`.
#[inline(always)]
fn upper_layer(frame: &Frame, p: &mut Packet, l4: usize, end: usize) {
    p.l4 = L4_TRUNCATED;
    match p.proto {
        ipproto::TCP => {
            if l4 + TcpHdr::LEN > end {
                return;
            }
            let Ok(hdr) = frame.read::<TcpHdr>(l4) else {
                return;
            };
            let hdr_len = tcp_header_len(&hdr);
            if hdr_len < TcpHdr::LEN || l4 + hdr_len > end {
                return;
            }
            tcp_facts(frame, p, &hdr, l4, hdr_len, end);
        }
        ipproto::ICMP | ipproto::ICMPV6 => {
            // Type, code, checksum and the 4-byte rest of header every message has.
            if l4 + 8 > end {
                return;
            }
            let Ok(hdr) = frame.read::<[u8; 8]>(l4) else {
                return;
            };
            p.icmp_type = hdr[0];
            if is_icmp_error(p.family, p.proto, p.icmp_type) {
                quoted(frame, p, l4 + 8, end);
            }
        }
        ipproto::UDP => {
            if l4 + 8 > end {
                return;
            }
            let Ok(ports) = frame.read::<[u8; 4]>(l4) else {
                return;
            };
            p.sport_be = u16::from_ne_bytes([ports[0], ports[1]]);
            p.dport_be = u16::from_ne_bytes([ports[2], ports[3]]);
        }
        _ => {}
    }
    p.l4 = L4_WHOLE;
}

/// Bytes 12 and 13 of a TCP header (RFC 9293 §3.1): the data offset in the high
/// nibble, then the flags. Taken whole rather than through the bitfield's accessors,
/// which walk it a bit at a time.
#[inline(always)]
fn tcp_offset_flags(hdr: &TcpHdr) -> [u8; 2] {
    // SAFETY: `BitfieldU16` (network-types, pinned) is `#[repr(C)]` around its
    // `[u8; 2]` storage; any two bytes are a valid `[u8; 2]`.
    unsafe { core::mem::transmute(hdr._bitfield_1) }
}

/// The TCP header's length by its data offset (not yet checked against anything).
#[inline(always)]
fn tcp_header_len(hdr: &TcpHdr) -> usize {
    usize::from(tcp_offset_flags(hdr)[0] >> 4) * 4
}

/// The facts of a TCP header of `hdr_len` bytes at `l4`, checked to end by `end`.
#[inline(always)]
fn tcp_facts(frame: &Frame, p: &mut Packet, hdr: &TcpHdr, l4: usize, hdr_len: usize, end: usize) {
    p.sport_be = u16::from_ne_bytes(hdr.source);
    p.dport_be = u16::from_ne_bytes(hdr.dest);
    p.seq = u32::from_be_bytes(hdr.seq);
    p.ack_seq = u32::from_be_bytes(hdr.ack_seq);
    p.tcp_payload = (end - l4 - hdr_len) as u16;
    p.tcp_flags = tcp_offset_flags(hdr)[1] & (tcp_flags::FIN | tcp_flags::SYN | tcp_flags::RST | tcp_flags::ACK);
    p.window = u16::from_be_bytes(hdr.window);
    if p.tcp_flags & tcp_flags::SYN != 0 {
        p.wscale = wscale(frame, l4 + TcpHdr::LEN, l4 + hdr_len);
    }
}

/// ICMP destination unreachable (fragmentation needed included), time exceeded and
/// parameter problem; ICMPv6 errors 1-4.
#[inline(always)]
pub(crate) fn is_icmp_error(fam: u8, proto: u8, icmp_type: u8) -> bool {
    if fam == family::V4 {
        proto == ipproto::ICMP && matches!(icmp_type, ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETERPROB)
    } else {
        proto == ipproto::ICMPV6 && (1..=ICMPV6_ERROR_MAX).contains(&icmp_type)
    }
}

/// The window scale option among a SYN's options at `start..end`, or [`NO_WSCALE`].
#[inline(always)]
fn wscale(frame: &Frame, start: usize, end: usize) -> u8 {
    const EOL: u8 = 0;
    const NOP: u8 = 1;
    const WINDOW_SCALE: u8 = 3;
    let mut off = start;
    for _ in 0..MAX_TCP_OPTIONS {
        if off + 1 > end {
            break;
        }
        let Ok(kind) = frame.read::<u8>(off) else {
            break;
        };
        if kind == EOL {
            break;
        }
        if kind == NOP {
            off += 1;
            continue;
        }
        if off + 2 > end {
            break;
        }
        let Ok(opt) = frame.read::<[u8; 3]>(off) else {
            break;
        };
        let len = usize::from(opt[1]);
        if kind == WINDOW_SCALE {
            return if len == 3 && off + 3 <= end { opt[2].min(MAX_WSCALE) } else { NO_WSCALE };
        }
        if len < 2 {
            break;
        }
        // Verifier: as in the extension-header walk, the mask bounds the offset
        // without changing it (a TCP header ends within 60 bytes of its start).
        off = (off + len) & 0x7fff;
    }
    NO_WSCALE
}

/// The tuple of the packet an ICMP error quotes at `at..end`, into [`QUOTE`].
#[inline(always)]
fn quoted(frame: &Frame, p: &mut Packet, at: usize, end: usize) {
    let Some(q) = QUOTE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU array slot, valid for this run and written by this CPU only.
    let q = unsafe { &mut *q };
    let (proto, ports_at) = if p.family == family::V4 {
        if at + Ipv4Hdr::LEN > end {
            return;
        }
        let Ok(hdr) = frame.read::<Ipv4Hdr>(at) else {
            return;
        };
        let ihl = usize::from(hdr.ihl());
        if hdr.version() != 4 || ihl < Ipv4Hdr::LEN || hdr.frag_offset() != 0 {
            return;
        }
        mem::set_addr4(&mut q.src, hdr.src_addr);
        mem::set_addr4(&mut q.dst, hdr.dst_addr);
        (hdr.proto, at + ihl)
    } else {
        if at + Ipv6Hdr::LEN > end {
            return;
        }
        let Ok(hdr) = frame.read::<Ipv6Hdr>(at) else {
            return;
        };
        if hdr.version() != 6 {
            return;
        }
        mem::set_addr(&mut q.src, &hdr.src_addr);
        mem::set_addr(&mut q.dst, &hdr.dst_addr);
        (hdr.next_hdr, at + Ipv6Hdr::LEN)
    };
    if (proto != ipproto::TCP && proto != ipproto::UDP) || ports_at + 4 > end {
        return;
    }
    let Ok(ports) = frame.read::<[u8; 4]>(ports_at) else {
        return;
    };
    q.sport_be = u16::from_ne_bytes([ports[0], ports[1]]);
    q.dport_be = u16::from_ne_bytes([ports[2], ports[3]]);
    q.family = p.family;
    q.proto = proto;
    q._pad = [0; 2];
    p.inner = proto;
}
