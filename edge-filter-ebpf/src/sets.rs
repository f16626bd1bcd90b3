//! The address sets, edge and peer: which sets an address is in.
//!
//! Each family's set table is a hash map keyed by (prefix length, network address),
//! and `Config::lens` lists the lengths the table holds, longest first. An address is
//! looked up at each of those lengths in turn, with its bits beyond the length
//! cleared; the first hit is its longest matching prefix, and its value's `all` mask
//! the address's sets (userspace folds every containing prefix's sets into it). Userspace allows at most [`MAX_PREFIX_LENS`] lengths per family.
//!
//! A family whose sets hold at most `SMALL_SET` prefixes (the realistic Edge: a
//! handful of addresses) is scanned in place: its prefixes sit in the same
//! `Config::lens` entry, longest first, and the first whose mask matches answers. No
//! call, and no other read: a scan of a few prefixes costs less than the hint below.
//!
//! In larger sets, single addresses (/32, /128: most of what a large set holds) are
//! in `EXACT4`/`EXACT6`, a bucket of a few ways per address hash
//! (`edge_filter_common::exact`): one array read the verifier inlines, and a compare
//! per way. They are the longest prefixes, so a hit there is the answer; an address
//! whose bucket was full when it was written is in the hash table at its full length,
//! and its bucket says so. The lengths listed for the hash table then leave the full
//! length out, and a family of single addresses only probes nothing more.
//!
//! Prefixes of larger sets are probed in the hash table as above, after `EDGE_HINTS` is asked:
//! one bit per bucket of leading address bits ([`hint`]), set where some prefix
//! falls. Most addresses a firewall sees are partners in no set; their bit is clear,
//! and the answer costs an array read the verifier inlines. A hash probe is a call,
//! and calls are what a packet pays for on machines with return-thunk mitigations
//! (`cargo xtask bench`); LPM tries, which this replaced, cost four probes' worth per
//! walk.
//!
//! Contract with userspace: while the sets change, every hint bit is set and the
//! lengths listed are those of the old and new sets together, so a lookup never misses
//! an entry that is in the table; afterwards the hints are exact again. A list of
//! lengths is published whole: written into the entry of `Config::lens` no packet reads,
//! then made current by flipping `Settings::lens_at`. A listed length with no entries
//! costs one probe and finds nothing.

use edge_filter_common::{MAX_PREFIX_LENS, PrefixLens, SMALL_NONE, SetKey4, SetKey6, exact, family, hint};

use crate::maps::{EDGE_HINTS, EDGE4, EDGE6, EXACT4, EXACT6};

/// Whether bucket `b` of the family whose words start at `base` may hold a prefix.
#[inline(always)]
fn hinted(base: u32, b: u32) -> bool {
    // A missing word (it cannot be: the array is sized for every bucket) means probe.
    EDGE_HINTS.get(base + (b >> 6)).is_none_or(|w| (w >> (b & 63)) & 1 != 0)
}

/// Set mask of the address (0: in no set), by the current `lens`
/// (`Config::lens`, read once for both of a packet's addresses). `addr` is network
/// order; IPv4 in its first four bytes.
#[inline(always)]
pub(crate) fn sets_of(lens: &PrefixLens, fam: u8, addr: &[u8; 16]) -> u32 {
    if fam == family::V4 {
        let a = u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]]);
        if lens.v4_small != SMALL_NONE {
            for (i, e) in lens.small4.iter().enumerate() {
                if i >= usize::from(lens.v4_small) {
                    break;
                }
                if a & e.mask == e.net {
                    return e.all;
                }
            }
            return 0;
        }
        if lens.v4_exact != 0
            && let Some(b) = EXACT4.get(exact::bucket4(a))
        {
            for w in 0..exact::WAYS {
                if b.addr[w] == a && b.all[w] != 0 {
                    return b.all[w];
                }
            }
            if b.spilled != 0 {
                let key = SetKey4 { len: 32, addr: a.to_be_bytes() };
                // SAFETY: as below.
                if let Some(bits) = unsafe { EDGE4.get(&key) } {
                    return bits.all;
                }
            }
        }
        if lens.v4_count == 0 || !hinted(0, hint::bucket4_masked(a, lens.v4_hint_mask)) {
            return 0;
        }
        for i in 0..MAX_PREFIX_LENS {
            if i >= usize::from(lens.v4_count) {
                break;
            }
            let len = u32::from(lens.v4[i]).min(32);
            let key = SetKey4 { len, addr: (a & hint::mask32(len)).to_be_bytes() };
            // SAFETY: the value is copied out at once; userspace replaces entries whole.
            if let Some(bits) = unsafe { EDGE4.get(&key) } {
                return bits.all;
            }
        }
    } else {
        let [hi, lo] = exact::halves6(addr);
        if lens.v6_small != SMALL_NONE {
            for (i, e) in lens.small6.iter().enumerate() {
                if i >= usize::from(lens.v6_small) {
                    break;
                }
                if hi & e.mask[0] == e.net[0] && lo & e.mask[1] == e.net[1] {
                    return e.all;
                }
            }
            return 0;
        }
        if lens.v6_exact != 0
            && let Some(b) = EXACT6.get(exact::bucket6(hi, lo))
        {
            for w in 0..exact::WAYS {
                if b.addr[w][0] == hi && b.addr[w][1] == lo && b.all[w] != 0 {
                    return b.all[w];
                }
            }
            if b.spilled != 0 {
                let key = SetKey6 { len: 128, addr: *addr };
                // SAFETY: as below.
                if let Some(bits) = unsafe { EDGE6.get(&key) } {
                    return bits.all;
                }
            }
        }
        if lens.v6_count == 0 || !hinted(hint::WORDS, hint::bucket6_masked(addr, &lens.v6_hint_mask)) {
            return 0;
        }
        for i in 0..MAX_PREFIX_LENS {
            if i >= usize::from(lens.v6_count) {
                break;
            }
            let len = u32::from(lens.v6[i]).min(128);
            let key = SetKey6 { len, addr: hint::mask6(addr, len) };
            // SAFETY: as above.
            if let Some(bits) = unsafe { EDGE6.get(&key) } {
                return bits.all;
            }
        }
    }
    0
}
