//! The address sets in the maps: per family, a hash table of prefixes with their set
//! masks, the prefix lengths it holds (with the small tables scanned in place), the
//! hint bits, and the peer sets' names. Single addresses (/32, /128) are in the
//! bucketed tables of `edge_filter_common::exact` instead, but for those a full bucket
//! sent to the hash table, which their bucket counts.
//!
//! Contract: the kernel's sets are made equal to the wanted ones so that an address
//! that stays in a set is never missing (see [`Maps::set_address_sets`]); what is read
//! back ([`Maps::address_sets`]) is what was written.

use aya::{
    Pod,
    maps::{Array, HashMap, MapData, MapError},
};
use edge_filter_common::{
    Exact4, Exact6, MAX_PREFIX_LENS, MAX_SETS, PrefixLens, SMALL_SET, SetBits, SetKey4, SetKey6, SetName, Small4, Small6, exact, hint, map,
};

use super::{Error, Maps, map_err, maps::remove, policy::name_str};
use crate::addr::{AddressSets, Prefix, SetId};

impl Maps {
    /// Each set's name and how many prefixes it holds, in index order, as the sets
    /// were last written: a few array entries, where [`Maps::address_sets`] reads every
    /// set table. The edge sets are there before any write, empty.
    pub fn set_sizes(&self) -> Result<Vec<(String, usize)>, Error> {
        let names = self.array_values::<SetName>(map::SET_NAMES)?;
        let builtin = AddressSets::default();
        let mut out: Vec<(String, usize)> = builtin.sets().map(|s| (builtin.name(s).to_owned(), 0)).collect();
        for (i, n) in names.iter().enumerate() {
            let Some(name) = name_str(&n.name) else { continue };
            let size = n.prefixes as usize;
            match out.get_mut(i) {
                Some(slot) => *slot = (name, size),
                None => out.push((name, size)),
            }
        }
        Ok(out)
    }

    /// The address sets the kernel holds, with the names of its peer sets.
    pub fn address_sets(&self) -> Result<AddressSets, Error> {
        let mut sets = AddressSets::default();
        for i in edge_filter_common::set::EDGE_COUNT..MAX_SETS {
            let n = self.set_names.get(&i, 0).map_err(map_err(map::SET_NAMES))?;
            let Some(name) = name_str(&n.name) else { break };
            let id = sets.add_peer(&name).map_err(|e| Error::Corrupt { name: map::SET_NAMES, what: e.to_string() })?;
            if u32::from(id.index()) != i {
                return Err(Error::Corrupt { name: map::SET_NAMES, what: format!("peer set `{name}` at index {i}") });
            }
        }
        let mut v4 = Vec::new();
        self.each::<u32, Exact4>(map::EXACT4, |_, b| {
            for w in (0..exact::WAYS).filter(|&w| b.all[w] != 0) {
                v4.push((std::net::Ipv4Addr::from(b.addr[w]).into(), 32, b.own[w]));
            }
        })?;
        self.each::<SetKey4, SetBits>(map::EDGE4, |k, b| v4.push((std::net::Ipv4Addr::from(k.addr).into(), k.len, b.own)))?;
        for (addr, len, own) in v4 {
            insert_read(&mut sets, map::EDGE4, addr, len, own)?;
        }
        let mut v6 = Vec::new();
        self.each::<u32, Exact6>(map::EXACT6, |_, b| {
            for w in (0..exact::WAYS).filter(|&w| b.all[w] != 0) {
                v6.push((std::net::Ipv6Addr::from(exact::octets6(b.addr[w])).into(), 128, b.own[w]));
            }
        })?;
        self.each::<SetKey6, SetBits>(map::EDGE6, |k, b| v6.push((std::net::Ipv6Addr::from(k.addr).into(), k.len, b.own)))?;
        for (addr, len, own) in v6 {
            insert_read(&mut sets, map::EDGE6, addr, len, own)?;
        }
        Ok(sets)
    }

    /// Make the kernel's sets equal to `want`, so that an address that stays in a set
    /// is never missing: every hint bit is set first and the prefix lengths of both
    /// old and new sets listed (when they fit); entries whose masks change are
    /// written, the lengths narrowed to the new sets', stale entries removed; then the
    /// hints are made exact again. The peer sets' names are written first.
    pub fn set_address_sets(&mut self, want: &AddressSets) -> Result<(), Error> {
        let have = self.address_sets()?;
        self.replace_sets(&have, want)
    }

    /// [`Maps::set_address_sets`] from `have`, the sets the kernel holds.
    fn replace_sets(&mut self, have: &AddressSets, want: &AddressSets) -> Result<(), Error> {
        let wanted = lens_of(want)?;
        for i in 0..MAX_SETS {
            let mut n = SetName::default();
            if let Some(id) = SetId::from_index(i).filter(|id| want.sets().any(|s| s == *id)) {
                let text = want.name(id).as_bytes();
                n.name[..text.len()].copy_from_slice(text);
                n.prefixes = u32::try_from(want.of(id).count()).unwrap_or(u32::MAX);
            }
            self.set_names.set(i, n, 0).map_err(map_err(map::SET_NAMES))?;
        }
        self.write_hints(None)?;
        let union = |v6: bool| {
            let mut lens = have.lengths(v6);
            lens.extend(want.lengths(v6));
            lens
        };
        if let Some(both) = prefix_lens(union(false), union(true)) {
            self.write_lens(both)?;
        }
        for prefix in want.prefixes() {
            let bits = SetBits { own: want.own(&prefix), all: want.all(&prefix) };
            let old = SetBits { own: have.own(&prefix), all: have.all(&prefix) };
            if bits != old {
                self.write_prefix(prefix, Some(bits))?;
            }
        }
        self.write_lens(wanted)?;
        for prefix in have.prefixes() {
            if want.own(&prefix) == 0 {
                self.write_prefix(prefix, None)?;
            }
        }
        self.write_hints(Some(want))
    }

    /// Write the hint bits of `sets`, or set them all (`None`).
    fn write_hints(&mut self, sets: Option<&AddressSets>) -> Result<(), Error> {
        let words = hint::WORDS as usize;
        let mut bits = vec![if sets.is_some() { 0 } else { u64::MAX }; 2 * words];
        if let Some(sets) = sets {
            let lens = lens_of(sets)?;
            for prefix in sets.prefixes() {
                let b = match prefix.addr() {
                    std::net::IpAddr::V4(a) => hint::bucket4(u32::from(a), u32::from(lens.v4_hint)) as usize,
                    std::net::IpAddr::V6(a) => 64 * words + hint::bucket6(&a.octets(), u32::from(lens.v6_hint)) as usize,
                };
                bits[b / 64] |= 1 << (b % 64);
            }
        }
        for (i, w) in bits.into_iter().enumerate() {
            self.edge_hints.set(i as u32, w, 0).map_err(map_err(map::EDGE_HINTS))?;
        }
        Ok(())
    }

    /// Publish a list of prefix lengths: written whole into the entry no packet
    /// reads, then made current by the settings' `lens_at`, so no packet sees half a
    /// list. (Each write leaves every other byte of the value as it was: a packet that
    /// reads it meanwhile sees either entry, both whole.)
    fn write_lens(&mut self, lens: PrefixLens) -> Result<(), Error> {
        let mut config = self.config()?;
        let next = (config.settings.lens_at & 1) ^ 1;
        config.lens[next as usize] = lens;
        self.write_config(&config)?;
        config.settings.lens_at = next;
        self.write_config(&config)
    }

    fn write_prefix(&mut self, prefix: Prefix, bits: Option<SetBits>) -> Result<(), Error> {
        let len = u32::from(prefix.len());
        match prefix.addr() {
            std::net::IpAddr::V4(a) if len == 32 => write_exact(&mut self.exact4, &mut self.edge4, u32::from(a), bits),
            std::net::IpAddr::V6(a) if len == 128 => write_exact(&mut self.exact6, &mut self.edge6, exact::halves6(&a.octets()), bits),
            std::net::IpAddr::V4(a) => write_entry(&mut self.edge4, map::EDGE4, SetKey4 { len, addr: a.octets() }, bits),
            std::net::IpAddr::V6(a) => write_entry(&mut self.edge6, map::EDGE6, SetKey6 { len, addr: a.octets() }, bits),
        }
    }
}

/// A bucket of single addresses (`Exact4`, `Exact6`), with what its family's maps
/// are called and keyed by.
trait Bucket: Pod {
    type Addr: PartialEq + Copy + Default;
    /// Key of the family's hash table, where a full bucket's addresses go.
    type Key: Pod;
    const NAME: &'static str;
    const SPILL_NAME: &'static str;
    /// The bucket of `addr`.
    fn index(addr: Self::Addr) -> u32;
    /// `addr`'s key in the hash table, at the family's full length.
    fn key(addr: Self::Addr) -> Self::Key;
    fn ways(&mut self) -> (&mut [Self::Addr; exact::WAYS], &mut [u32; exact::WAYS], &mut [u32; exact::WAYS]);
    fn spilled(&mut self) -> &mut u32;
}

impl Bucket for Exact4 {
    type Addr = u32;
    type Key = SetKey4;
    const NAME: &'static str = map::EXACT4;
    const SPILL_NAME: &'static str = map::EDGE4;
    fn index(addr: u32) -> u32 {
        exact::bucket4(addr)
    }
    fn key(addr: u32) -> SetKey4 {
        SetKey4 { len: 32, addr: addr.to_be_bytes() }
    }
    fn ways(&mut self) -> (&mut [u32; exact::WAYS], &mut [u32; exact::WAYS], &mut [u32; exact::WAYS]) {
        (&mut self.addr, &mut self.all, &mut self.own)
    }
    fn spilled(&mut self) -> &mut u32 {
        &mut self.spilled
    }
}

impl Bucket for Exact6 {
    type Addr = [u64; 2];
    type Key = SetKey6;
    const NAME: &'static str = map::EXACT6;
    const SPILL_NAME: &'static str = map::EDGE6;
    fn index([hi, lo]: [u64; 2]) -> u32 {
        exact::bucket6(hi, lo)
    }
    fn key(addr: [u64; 2]) -> SetKey6 {
        SetKey6 { len: 128, addr: exact::octets6(addr) }
    }
    fn ways(&mut self) -> (&mut [[u64; 2]; exact::WAYS], &mut [u32; exact::WAYS], &mut [u32; exact::WAYS]) {
        (&mut self.addr, &mut self.all, &mut self.own)
    }
    fn spilled(&mut self) -> &mut u32 {
        &mut self.spilled
    }
}

/// Write a single address's set masks, or remove it (`None`): in a way of its bucket
/// of `table`, or in the hash table `spill` at its full length when it is there
/// already or the bucket is full. An address that stays keeps its place, so a packet
/// never misses it; a spilled address is in the hash table before its bucket counts
/// it. (A way freed later is not filled from the hash table: the next address of the
/// bucket takes it.)
fn write_exact<B: Bucket>(
    table: &mut Array<MapData, B>,
    spill: &mut HashMap<MapData, B::Key, SetBits>,
    addr: B::Addr,
    bits: Option<SetBits>,
) -> Result<(), Error> {
    let (name, spill_name, index, key) = (B::NAME, B::SPILL_NAME, B::index(addr), B::key(addr));
    let mut b = table.get(&index, 0).map_err(map_err(name))?;
    // Not in a way: in the hash table if its bucket spilled and it is there.
    let in_spill = *b.spilled() != 0
        && match spill.get(&key, 0) {
            Ok(_) => true,
            Err(MapError::KeyNotFound) => false,
            Err(e) => return Err(map_err(spill_name)(e)),
        };
    let (addrs, all, own) = b.ways();
    let at = match ((0..exact::WAYS).find(|&w| all[w] != 0 && addrs[w] == addr), bits) {
        (Some(w), _) => Some(w),
        _ if in_spill => None,
        (None, Some(_)) => (0..exact::WAYS).find(|&w| all[w] == 0),
        (None, None) => return Ok(()),
    };
    let Some(w) = at else {
        write_entry(spill, spill_name, key, bits)?;
        // The bucket counts its addresses in the hash table: added after the entry
        // (a packet probes only once it is there), taken away after it is gone.
        let count = b.spilled();
        match (in_spill, bits) {
            (false, Some(_)) => *count += 1,
            (true, None) => *count = count.saturating_sub(1),
            _ => return Ok(()),
        }
        return table.set(index, b, 0).map_err(map_err(name));
    };
    let bits = bits.unwrap_or_default();
    (addrs[w], all[w], own[w]) = (if bits.all == 0 { B::Addr::default() } else { addr }, bits.all, bits.own);
    table.set(index, b, 0).map_err(map_err(name))
}

fn insert_read(sets: &mut AddressSets, name: &'static str, addr: std::net::IpAddr, len: u32, own: u32) -> Result<(), Error> {
    let corrupt = |what: String| Error::Corrupt { name, what };
    let len = u8::try_from(len).map_err(|_| corrupt(format!("prefix length {len}")))?;
    let prefix = Prefix::new(addr, len).map_err(|e| corrupt(e.to_string()))?;
    if own == 0 || own >> sets.sets().count() != 0 {
        return Err(corrupt(format!("set mask {own:#x} for {prefix}")));
    }
    for set in sets.sets().collect::<Vec<_>>() {
        if own & set.bit() != 0 {
            sets.insert_read(set, prefix).map_err(|e| corrupt(e.to_string()))?;
        }
    }
    Ok(())
}

/// Write `key`'s set masks, or remove it (`None`).
fn write_entry<K: Pod>(table: &mut HashMap<MapData, K, SetBits>, name: &'static str, key: K, bits: Option<SetBits>) -> Result<(), Error> {
    match bits {
        Some(bits) => table.insert(key, bits, 0).map_err(map_err(name)),
        None => remove(table, name, &key),
    }
}

/// The value of `EDGE_LENS` for these prefix lengths (duplicates allowed), or `None`
/// when a family has more than the kernel looks up. The full length is left out and
/// marks the family's exact table in use. Hints are taken at the shortest length left
/// (0 when none is).
/// The lengths alone, without small tables: a packet probes the hash tables.
fn prefix_lens(mut v4: Vec<u8>, mut v6: Vec<u8>) -> Option<PrefixLens> {
    let mut out = PrefixLens::default();
    for (lens, full, exact, slots, count, hint) in [
        (&mut v4, 32, &mut out.v4_exact, &mut out.v4, &mut out.v4_count, &mut out.v4_hint),
        (&mut v6, 128, &mut out.v6_exact, &mut out.v6, &mut out.v6_count, &mut out.v6_hint),
    ] {
        lens.sort_unstable_by(|a, b| b.cmp(a));
        lens.dedup();
        // Single addresses are in the exact tables.
        if lens.first() == Some(&full) {
            lens.remove(0);
            *exact = 1;
        }
        if lens.len() > MAX_PREFIX_LENS {
            return None;
        }
        slots[..lens.len()].copy_from_slice(lens);
        *count = lens.len() as u8;
        *hint = lens.last().copied().unwrap_or(0);
    }
    out.v4_hint_mask = hint::mask32(u32::from(out.v4_hint));
    out.v6_hint_mask = hint::mask6_words(u32::from(out.v6_hint));
    Some(out)
}

/// The value of `EDGE_LENS` for `sets`, which [`AddressSets::insert`] keeps within
/// the kernel's limit; sets read back from an interrupted change may pass it.
fn lens_of(sets: &AddressSets) -> Result<PrefixLens, Error> {
    let mut out = prefix_lens(sets.lengths(false), sets.lengths(true)).ok_or(Error::TooManyLengths)?;
    let mut v4: Vec<(u8, Small4)> = Vec::new();
    let mut v6: Vec<(u8, Small6)> = Vec::new();
    for prefix in sets.prefixes() {
        let all = sets.all(&prefix);
        let len = prefix.len();
        match prefix.addr() {
            std::net::IpAddr::V4(a) => {
                let mask = hint::mask32(u32::from(len));
                v4.push((len, Small4 { net: u32::from(a) & mask, mask, all }));
            }
            std::net::IpAddr::V6(a) => {
                let ones = hint::mask6(&[0xff; 16], u32::from(len));
                let net = hint::mask6(&a.octets(), u32::from(len));
                let half = |b: &[u8; 16], i: usize| u64::from_ne_bytes(b[8 * i..8 * i + 8].try_into().expect("eight bytes"));
                v6.push((len, Small6 { net: [half(&net, 0), half(&net, 1)], mask: [half(&ones, 0), half(&ones, 1)], all, _pad: 0 }));
            }
        }
    }
    // Longest first: the first match is the longest prefix, whose `all` holds the
    // sets of every prefix that contains it.
    v4.sort_by_key(|e| std::cmp::Reverse(e.0));
    v6.sort_by_key(|e| std::cmp::Reverse(e.0));
    if v4.len() <= SMALL_SET {
        out.v4_small = v4.len() as u8;
        for (slot, (_, e)) in out.small4.iter_mut().zip(v4) {
            *slot = e;
        }
    }
    if v6.len() <= SMALL_SET {
        out.v6_small = v6.len() as u8;
        for (slot, (_, e)) in out.small6.iter_mut().zip(v6) {
            *slot = e;
        }
    }
    Ok(out)
}
