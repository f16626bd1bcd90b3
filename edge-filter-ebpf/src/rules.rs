//! The rule match: which rows of the rule table a packet opens, and which rows its
//! reply direction could belong to, in a handful of array reads whatever the number of
//! rows.
//!
//! Userspace compiles the rows ([`edge_filter_common::Rule`]) into masks with one bit
//! per row:
//! - `PORT_ROWS[proto][port]`: rows of the protocol whose port or range holds `port`;
//! - `SET_ROWS[half][byte]`: for each byte of an address's 16-bit set mask, the rows
//!   whose source (or destination) such an address matches; rows of "any" are in
//!   every entry of the low half, so an address in no set matches exactly them;
//! - `Settings::rulesets`: rows that open from `edge` NICs and from `outside`/`host`
//!   NICs.
//!
//! A packet opens the rows in `ports[dport] & from_role & src_rows(src) & dst_rows(dst)`,
//! the port and role first (`rows`).
//! It may be a reply of the rows in `ports[sport] & reply_role & src_rows(dst) &
//! dst_rows(src)`: the same test on the swapped tuple, with the role its reply arrives
//! on. Only then is a flow looked up.
//!
//! Every map here is an array with a constant index bound, so the verifier inlines
//! each lookup: no call, whatever the number of rows. The maps and the rulesets exist
//! twice (`Settings::rules_at` names the current generation): userspace writes the
//! other generation whole and flips, so no packet sees half a table.

use edge_filter_common::{Settings, proto_index, role};

use crate::maps::{PORT_ROWS, SET_ROWS};

/// The rows a packet opens and the rows it may be a reply of.
pub(crate) struct Rows {
    pub open: u64,
    pub reply: u64,
}

#[inline(always)]
fn port_rows(generation: u32, proto: u32, port_be: u16) -> u64 {
    let port = u32::from(u16::from_be(port_be));
    PORT_ROWS.get((generation * 2 + proto) * 65_536 + port).copied().unwrap_or(0)
}

/// (source rows, destination rows) an address with set mask `bits` matches.
#[inline(always)]
fn set_rows(generation: u32, bits: u32) -> (u64, u64) {
    let lo = SET_ROWS.get(generation * 512 + (bits & 0xff));
    let (mut src, mut dst) = lo.map_or((0, 0), |r| (r.src, r.dst));
    // The high half's entry 0 is empty ("any" rows are in the low half only): an
    // address in no set of the high byte (most addresses: it holds peer sets) skips it.
    let high = (bits >> 8) & 0xff;
    if high != 0
        && let Some(r) = SET_ROWS.get(generation * 512 + 256 + high)
    {
        src |= r.src;
        dst |= r.dst;
    }
    (src, dst)
}

/// The rows of a TCP or UDP packet from an address with set mask `src_bits` to one
/// with `dst_bits`, arriving on a NIC of `nic_role`.
#[inline(always)]
pub(crate) fn rows(settings: &Settings, proto: u8, sport_be: u16, dport_be: u16, src_bits: u32, dst_bits: u32, nic_role: u32) -> Rows {
    let Some(proto) = proto_index(proto) else {
        return Rows { open: 0, reply: 0 };
    };
    let generation = settings.rules_at & 1;
    let set = &settings.rulesets[generation as usize];
    let here = usize::from(nic_role == role::EDGE);
    let (opens_here, replies_here) = (set.opens[here], set.opens[here ^ 1]);
    // Ports first: most packets that reach here and match no row (a scan, a service
    // the Edge does not offer) name a port of no row in either direction, and are
    // answered in two reads instead of six.
    let open = opens_here & port_rows(generation, proto, dport_be);
    let reply = replies_here & port_rows(generation, proto, sport_be);
    if open | reply == 0 {
        return Rows { open: 0, reply: 0 };
    }
    let (src_as_src, src_as_dst) = set_rows(generation, src_bits);
    let (dst_as_src, dst_as_dst) = set_rows(generation, dst_bits);
    Rows { open: open & src_as_src & dst_as_dst, reply: reply & dst_as_src & src_as_dst }
}

/// The index of the lowest set bit of a non-zero mask: the row a packet is counted
/// under when it opens several. The BPF instruction set has no count-trailing-zeros:
/// the bits below the lowest set one, counted in parallel (a dozen instructions, no
/// branch).
#[inline(always)]
pub(crate) fn first(mask: u64) -> u32 {
    let below = (mask & mask.wrapping_neg()).wrapping_sub(1);
    let x = below - ((below >> 1) & 0x5555_5555_5555_5555);
    let x = (x & 0x3333_3333_3333_3333) + ((x >> 2) & 0x3333_3333_3333_3333);
    let x = (x + (x >> 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    (x.wrapping_mul(0x0101_0101_0101_0101) >> 56) as u32
}
