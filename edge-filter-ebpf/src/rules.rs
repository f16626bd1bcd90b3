//! The rule match: which rows of the rule table a packet opens, and which rows its
//! reply direction could belong to, in one map lookup and a handful of reads whatever
//! the number of rows.
//!
//! Userspace compiles the rows ([`edge_filter_common::Rule`]) into masks with one bit
//! per row, one generation of them a [`RuleTables`] value:
//! - `ports[proto][port]`: rows of the protocol whose port or range holds `port`;
//! - `set_rows[half][byte]`: for each byte of an address's 16-bit set mask, the rows
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
//! `RULE_TABLES` is an array, so the verifier inlines its lookup: no call, whatever
//! the number of rows; each mask is then a read at a bounded offset in the value. The
//! tables and the rulesets exist twice (`Settings::rules_at` names the current
//! generation): userspace writes the other generation whole and flips, so no packet
//! sees half a table.

use edge_filter_common::{RuleTables, Settings, proto_index, role};

use crate::maps::RULE_TABLES;

/// The rows a packet opens and the rows it may be a reply of.
pub(crate) struct Rows {
    pub open: u64,
    pub reply: u64,
}

/// The rows of protocol `proto` (its index) whose port or range holds `port_be`.
#[inline(always)]
fn port_rows(t: &RuleTables, proto: u32, port_be: u16) -> u64 {
    t.ports[(proto & 1) as usize][usize::from(u16::from_be(port_be))]
}

/// (source rows, destination rows) an address with set mask `bits` matches.
#[inline(always)]
fn set_rows(t: &RuleTables, bits: u32) -> (u64, u64) {
    let lo = &t.set_rows[(bits & 0xff) as usize];
    let (mut src, mut dst) = (lo.src, lo.dst);
    // The high half's entry 0 is empty ("any" rows are in the low half only): an
    // address in no set of the high byte (most addresses: it holds peer sets) skips it.
    let high = (bits >> 8) & 0xff;
    if high != 0 {
        let r = &t.set_rows[256 + high as usize];
        src |= r.src;
        dst |= r.dst;
    }
    (src, dst)
}

/// The rows of a TCP or UDP packet from an address with set mask `src_bits` to one
/// with `dst_bits`, arriving on a NIC of `nic_role`.
#[inline(always)]
pub(crate) fn rows(settings: &Settings, proto: u8, sport_be: u16, dport_be: u16, src_bits: u32, dst_bits: u32, nic_role: u32) -> Rows {
    let none = Rows { open: 0, reply: 0 };
    let Some(proto) = proto_index(proto) else {
        return none;
    };
    let generation = settings.rules_at & 1;
    let Some(t) = RULE_TABLES.get(generation) else {
        return none;
    };
    let set = &settings.rulesets[generation as usize];
    let here = usize::from(nic_role == role::EDGE);
    // Ports first: most packets that reach here and match no row (a scan, a service
    // the Edge does not offer) name a port of no row in either direction, and are
    // answered without the set masks.
    let open = set.opens[here] & port_rows(t, proto, dport_be);
    let reply = set.opens[here ^ 1] & port_rows(t, proto, sport_be);
    if open | reply == 0 {
        return none;
    }
    let (src_as_src, src_as_dst) = set_rows(t, src_bits);
    let (dst_as_src, dst_as_dst) = set_rows(t, dst_bits);
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
