//! The edge address sets: which sets an address is in.
//!
//! Each family's set table is a hash map keyed by (prefix length, network address),
//! and `EDGE_LENS` lists the lengths the table holds, longest first. An address is
//! looked up at each of those lengths in turn, with its bits beyond the length
//! cleared; the first hit is its longest matching prefix, and its value the address's
//! `set` bits. Userspace allows at most [`MAX_PREFIX_LENS`] lengths per family, so a
//! lookup is at most that many hash probes, and one when the sets hold exact
//! addresses only. This replaced LPM tries: one trie walk cost as much as four hash
//! probes (`cargo xtask bench`), and it was paid twice per packet.
//!
//! Contract with userspace: a length is listed in `EDGE_LENS` before entries of that
//! length are written and unlisted only after the last is removed, so a lookup never
//! misses an entry that is in the table. A length listed with no entries costs one
//! probe and finds nothing.

use edge_filter_common::{MAX_PREFIX_LENS, SetKey4, SetKey6, family};

use crate::maps::{EDGE_LENS, EDGE4, EDGE6};

/// The leading `keep` bits of a 32-bit word (`keep` <= 32).
#[inline(always)]
fn mask32(keep: u32) -> u32 {
    u32::MAX.checked_shl(32 - keep).unwrap_or(0)
}

/// `set` bits of the address (0: in no edge set). `addr` is network order; IPv4 in
/// its first four bytes.
#[inline(always)]
pub fn sets_of(fam: u8, addr: &[u8; 16]) -> u32 {
    let Some(lens) = EDGE_LENS.get(0) else {
        return 0;
    };
    if fam == family::V4 {
        let a = u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]]);
        for i in 0..MAX_PREFIX_LENS {
            if i >= usize::from(lens.v4_count) {
                break;
            }
            let len = u32::from(lens.v4[i]).min(32);
            let key = SetKey4 { len, addr: (a & mask32(len)).to_be_bytes() };
            // SAFETY: the value is copied out at once; userspace replaces entries whole.
            if let Some(bits) = unsafe { EDGE4.get(&key) } {
                return *bits;
            }
        }
    } else {
        for i in 0..MAX_PREFIX_LENS {
            if i >= usize::from(lens.v6_count) {
                break;
            }
            let len = u32::from(lens.v6[i]).min(128);
            let mut key = SetKey6 { len, addr: *addr };
            for w in 0..4 {
                let keep = len.saturating_sub(32 * w as u32).min(32);
                let word = [key.addr[4 * w], key.addr[4 * w + 1], key.addr[4 * w + 2], key.addr[4 * w + 3]];
                let masked = (u32::from_be_bytes(word) & mask32(keep)).to_be_bytes();
                key.addr[4 * w..4 * w + 4].copy_from_slice(&masked);
            }
            // SAFETY: as above.
            if let Some(bits) = unsafe { EDGE6.get(&key) } {
                return *bits;
            }
        }
    }
    0
}
