//! Edge address sets as the operator writes them and as the kernel looks them up.
//!
//! Contract:
//! - A [`Prefix`] is an address with a prefix length, IPv4 or IPv6; a bare address is
//!   a host prefix (/32, /128). Host bits beyond the prefix are refused rather than
//!   silently cleared: `203.0.113.10/24` is more likely a typo than a network.
//! - [`AddressSets`] holds the `access-edge` and `internal-edge` sets and refuses any
//!   prefix that overlaps a prefix of the *other* set: an address in both sets would
//!   make R1 and R3 depend on lookup order. Nesting inside one set is allowed.
//! - The kernel key is the prefix length and the network address in network order.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use edge_filter_common::set;

/// Why an address, prefix or set name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddrError {
    #[error("`{input}` is not an IP address or prefix (expected e.g. 203.0.113.10, 2001:db8::/64)")]
    Parse { input: String },
    #[error("`{input}`: prefix length {len} is longer than {max} bits")]
    PrefixTooLong { input: String, len: u32, max: u32 },
    #[error("`{input}` has host bits set beyond /{len}; did you mean {network}?")]
    HostBits { input: String, len: u8, network: Prefix },
    #[error("unknown address set `{input}` (expected access-edge or internal-edge)")]
    UnknownSet { input: String },
    #[error("{prefix} in {set} overlaps {other} in {other_set}: an address may be in one edge set only")]
    Overlap { prefix: Prefix, set: EdgeSet, other: Prefix, other_set: EdgeSet },
    #[error("{prefix}: the sets hold at most {max} prefixes per address family")]
    Full { prefix: Prefix, max: u32 },
    #[error("{prefix}: the sets hold prefixes of at most {max} different lengths per address family (they have {have})")]
    TooManyLengths { prefix: Prefix, max: usize, have: String },
}

/// An IPv4 or IPv6 network: an address and how many leading bits of it count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// A prefix, refusing lengths beyond the family's width and host bits beyond `len`.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, AddrError> {
        let input = format!("{addr}/{len}");
        let max = Self::width(&addr);
        if len > max {
            return Err(AddrError::PrefixTooLong { input, len: len.into(), max: max.into() });
        }
        let network = Self { addr: mask(addr, len), len };
        if network.addr != addr {
            return Err(AddrError::HostBits { input, len, network });
        }
        Ok(network)
    }

    /// A host prefix (/32 or /128).
    pub fn host(addr: IpAddr) -> Self {
        Self { addr, len: Self::width(&addr) }
    }

    fn width(addr: &IpAddr) -> u8 {
        if addr.is_ipv4() { 32 } else { 128 }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    #[expect(clippy::len_without_is_empty, reason = "a prefix length, not a collection's")]
    pub fn len(&self) -> u8 {
        self.len
    }

    pub fn is_host(&self) -> bool {
        self.len == Self::width(&self.addr)
    }

    /// Whether the two prefixes share any address.
    pub fn overlaps(&self, other: &Prefix) -> bool {
        if self.addr.is_ipv4() != other.addr.is_ipv4() {
            return false;
        }
        let len = self.len.min(other.len);
        mask(self.addr, len) == mask(other.addr, len)
    }

    /// The prefix's highest address.
    fn last(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) | u32::MAX.checked_shr(u32::from(self.len)).unwrap_or(0))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) | u128::MAX.checked_shr(u32::from(self.len)).unwrap_or(0))),
        }
    }

    /// Whether `addr` lies inside the prefix.
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.overlaps(&Prefix::host(addr))
    }
}

/// `addr` with every bit after the first `len` cleared, by the arithmetic the kernel
/// program masks with.
fn mask(addr: IpAddr, len: u8) -> IpAddr {
    use edge_filter_common::hint::{mask32, mask6};
    match addr {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(u32::from(len)))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(mask6(&a.octets(), u32::from(len)))),
    }
}

impl FromStr for Prefix {
    type Err = AddrError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let parse_err = || AddrError::Parse { input: input.to_owned() };
        let (addr, len) = match input.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (input, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| parse_err())?;
        let Some(len) = len else {
            return Ok(Self::host(addr));
        };
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(parse_err());
        }
        let max = u32::from(Self::width(&addr));
        match len.parse::<u32>() {
            Ok(l) if l <= max => Self::new(addr, l as u8).map_err(|e| match e {
                AddrError::HostBits { len, network, .. } => {
                    AddrError::HostBits { input: input.to_owned(), len, network }
                }
                other => other,
            }),
            Ok(l) => Err(AddrError::PrefixTooLong { input: input.to_owned(), len: l, max }),
            Err(_) => Err(AddrError::PrefixTooLong { input: input.to_owned(), len: u32::MAX, max }),
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_host() { write!(f, "{}", self.addr) } else { write!(f, "{}/{}", self.addr, self.len) }
    }
}

/// One of the two edge address sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EdgeSet {
    /// The Access Edge service interface addresses (R1, R2).
    AccessEdge,
    /// The internal Edge interface addresses (R3).
    InternalEdge,
}

impl EdgeSet {
    pub const ALL: [EdgeSet; 2] = [EdgeSet::AccessEdge, EdgeSet::InternalEdge];

    pub fn name(self) -> &'static str {
        match self {
            EdgeSet::AccessEdge => "access-edge",
            EdgeSet::InternalEdge => "internal-edge",
        }
    }

    /// The bit the kernel stores for this set.
    pub fn bit(self) -> u32 {
        match self {
            EdgeSet::AccessEdge => set::ACCESS_EDGE,
            EdgeSet::InternalEdge => set::INTERNAL_EDGE,
        }
    }

    pub fn from_bit(bit: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.bit() == bit)
    }
}

impl fmt::Display for EdgeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for EdgeSet {
    type Err = AddrError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|s| s.name() == input)
            .ok_or_else(|| AddrError::UnknownSet { input: input.to_owned() })
    }
}

/// The two edge address sets, free of cross-set overlaps.
///
/// Every operation is logarithmic in the number of prefixes (an overlap check looks
/// up each shorter prefix that could contain the new one and scans only the entries
/// inside it), so sets of 100k prefixes load as fast as the kernel takes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressSets {
    entries: BTreeSet<(Prefix, EdgeSet)>,
    /// Entries per family: IPv4, IPv6.
    counts: [usize; 2],
    /// Entries per prefix length, per family.
    lens: [BTreeMap<u8, usize>; 2],
}

impl AddressSets {
    /// Add `prefix` to `set`. Adding a prefix the set already has is a no-op.
    pub fn insert(&mut self, set: EdgeSet, prefix: Prefix) -> Result<(), AddrError> {
        self.insert_checked(set, prefix, true)
    }

    /// Add what the kernel's tables hold: as [`AddressSets::insert`], but more than
    /// [`edge_filter_common::MAX_PREFIX_LENS`] lengths are taken, so that the tables
    /// left by an interrupted change can be read and put right.
    pub fn insert_read(&mut self, set: EdgeSet, prefix: Prefix) -> Result<(), AddrError> {
        self.insert_checked(set, prefix, false)
    }

    fn insert_checked(&mut self, set: EdgeSet, prefix: Prefix, limit_lengths: bool) -> Result<(), AddrError> {
        if self.entries.contains(&(prefix, set)) {
            return Ok(());
        }
        if let Some((other, other_set)) = self.overlapping(&prefix).find(|(_, s)| *s != set) {
            return Err(AddrError::Overlap { prefix, set, other, other_set });
        }
        let fam = usize::from(prefix.addr.is_ipv6());
        let max = edge_filter_common::MAX_SET_ENTRIES;
        if self.counts[fam] >= max as usize {
            return Err(AddrError::Full { prefix, max });
        }
        let lens = &mut self.lens[fam];
        let max_lens = edge_filter_common::MAX_PREFIX_LENS;
        if limit_lengths && !lens.contains_key(&prefix.len) && lens.len() >= max_lens {
            let have = lens.keys().map(|l| format!("/{l}")).collect::<Vec<_>>().join(" ");
            return Err(AddrError::TooManyLengths { prefix, max: max_lens, have });
        }
        *lens.entry(prefix.len).or_default() += 1;
        self.counts[fam] += 1;
        self.entries.insert((prefix, set));
        Ok(())
    }

    /// Remove `prefix` from `set`; whether it was there.
    pub fn remove(&mut self, set: EdgeSet, prefix: &Prefix) -> bool {
        let removed = self.entries.remove(&(*prefix, set));
        if removed {
            let fam = usize::from(prefix.addr.is_ipv6());
            self.counts[fam] -= 1;
            if let Some(n) = self.lens[fam].get_mut(&prefix.len) {
                *n -= 1;
                if *n == 0 {
                    self.lens[fam].remove(&prefix.len);
                }
            }
        }
        removed
    }

    /// The prefix lengths the sets hold in one family, longest first.
    pub fn lengths(&self, ipv6: bool) -> Vec<u8> {
        self.lens[usize::from(ipv6)].keys().rev().copied().collect()
    }

    /// Every entry that shares an address with `prefix`: those that contain it, and
    /// those inside it (whose network addresses lie in its range).
    fn overlapping(&self, prefix: &Prefix) -> impl Iterator<Item = (Prefix, EdgeSet)> + '_ {
        let prefix = *prefix;
        let containing = (0..prefix.len).flat_map(move |len| {
            let outer = Prefix { addr: mask(prefix.addr, len), len };
            EdgeSet::ALL.into_iter().filter(move |s| self.entries.contains(&(outer, *s))).map(move |s| (outer, s))
        });
        let first = (Prefix { addr: prefix.addr, len: 0 }, EdgeSet::ALL[0]);
        let last = (Prefix { addr: prefix.last(), len: u8::MAX }, EdgeSet::ALL[EdgeSet::ALL.len() - 1]);
        containing.chain(self.entries.range(first..=last).copied())
    }

    /// Every `(prefix, set)`, ordered by prefix.
    pub fn iter(&self) -> impl Iterator<Item = (Prefix, EdgeSet)> + '_ {
        self.entries.iter().copied()
    }

    /// The set that holds exactly this prefix.
    pub fn set_of(&self, prefix: &Prefix) -> Option<EdgeSet> {
        EdgeSet::ALL.into_iter().find(|s| self.entries.contains(&(*prefix, *s)))
    }

    /// The prefixes of one set.
    pub fn of(&self, set: EdgeSet) -> impl Iterator<Item = Prefix> + '_ {
        self.entries.iter().filter(move |(_, s)| *s == set).map(|(p, _)| *p)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The set `addr` belongs to, by longest prefix as the kernel decides.
    pub fn lookup(&self, addr: IpAddr) -> Option<EdgeSet> {
        let host = Prefix::host(addr);
        (0..=host.len).rev().find_map(|len| {
            let p = Prefix { addr: mask(addr, len), len };
            self.set_of(&p)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn bare_addresses_are_host_prefixes() {
        assert_eq!(p("203.0.113.10"), Prefix::new("203.0.113.10".parse().unwrap(), 32).unwrap());
        assert_eq!(p("2001:db8:203::10").len(), 128);
        assert_eq!(p("203.0.113.10").to_string(), "203.0.113.10");
        assert_eq!(p("2001:db8::/32").to_string(), "2001:db8::/32");
        assert_eq!(p("0.0.0.0/0").len(), 0);
    }

    #[test]
    fn bad_input_names_the_value() {
        for (input, want) in [
            ("203.0.113", "`203.0.113` is not an IP address or prefix"),
            ("203.0.113.10/", "`203.0.113.10/` is not an IP address or prefix"),
            ("203.0.113.10/+8", "`203.0.113.10/+8` is not an IP address or prefix"),
            ("edge", "`edge` is not an IP address or prefix"),
            ("203.0.113.10/33", "`203.0.113.10/33`: prefix length 33 is longer than 32 bits"),
            ("2001:db8::/129", "`2001:db8::/129`: prefix length 129 is longer than 128 bits"),
            (
                "203.0.113.10/24",
                "`203.0.113.10/24` has host bits set beyond /24; did you mean 203.0.113.0/24?",
            ),
            (
                "2001:db8::1/64",
                "`2001:db8::1/64` has host bits set beyond /64; did you mean 2001:db8::/64?",
            ),
        ] {
            let err = input.parse::<Prefix>().unwrap_err().to_string();
            assert!(err.starts_with(want), "{input}: {err}");
        }
        assert!("203.0.113.10/99999999999".parse::<Prefix>().is_err());
    }

    #[test]
    fn overlap_is_containment_within_a_family() {
        assert!(p("203.0.113.0/24").overlaps(&p("203.0.113.10")));
        assert!(p("203.0.113.10").overlaps(&p("203.0.113.0/24")));
        assert!(!p("203.0.113.0/25").overlaps(&p("203.0.113.128/25")));
        assert!(!p("0.0.0.0/0").overlaps(&p("::/0")));
        assert!(p("2001:db8::/32").overlaps(&p("2001:db8:203::10")));
    }

    #[test]
    fn sets_refuse_cross_set_overlap_and_allow_nesting() {
        let mut sets = AddressSets::default();
        sets.insert(EdgeSet::AccessEdge, p("203.0.113.0/24")).unwrap();
        sets.insert(EdgeSet::AccessEdge, p("203.0.113.10")).unwrap();
        let err = sets.insert(EdgeSet::InternalEdge, p("203.0.113.20")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "203.0.113.20 in internal-edge overlaps 203.0.113.0/24 in access-edge: \
             an address may be in one edge set only"
        );
        sets.insert(EdgeSet::InternalEdge, p("192.0.2.10")).unwrap();
        assert_eq!(sets.len(), 3);
        assert_eq!(sets.lookup("203.0.113.99".parse().unwrap()), Some(EdgeSet::AccessEdge));
        assert_eq!(sets.lookup("192.0.2.10".parse().unwrap()), Some(EdgeSet::InternalEdge));
        assert_eq!(sets.lookup("192.0.2.11".parse().unwrap()), None);
        assert!(sets.remove(EdgeSet::AccessEdge, &p("203.0.113.0/24")));
        assert!(!sets.remove(EdgeSet::AccessEdge, &p("203.0.113.0/24")));
        assert_eq!(sets.of(EdgeSet::AccessEdge).collect::<Vec<_>>(), vec![p("203.0.113.10")]);
    }

    #[test]
    fn sets_refuse_a_ninth_prefix_length_per_family() {
        let mut sets = AddressSets::default();
        for (i, len) in (25..=32).enumerate() {
            let addr = Ipv4Addr::new(198, 18, i as u8, 0);
            sets.insert(EdgeSet::AccessEdge, Prefix::new(addr.into(), len).unwrap()).unwrap();
        }
        assert_eq!(sets.lengths(false), vec![32, 31, 30, 29, 28, 27, 26, 25]);
        let err = sets.insert(EdgeSet::AccessEdge, p("198.19.0.0/24")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "198.19.0.0/24: the sets hold prefixes of at most 8 different lengths per address family \
             (they have /25 /26 /27 /28 /29 /30 /31 /32)"
        );
        // What the kernel's tables hold is read back whatever its lengths: an
        // interrupted change can leave more, and reading them is how it is put right.
        let mut read = sets.clone();
        read.insert_read(EdgeSet::AccessEdge, p("198.19.0.0/24")).unwrap();
        assert_eq!(read.lengths(false).len(), 9);
        // Another prefix of a length already there, and the other family, still fit.
        sets.insert(EdgeSet::AccessEdge, p("198.19.0.0/25")).unwrap();
        sets.insert(EdgeSet::InternalEdge, p("2001:db8::/64")).unwrap();
        // A length whose last prefix goes is free again.
        assert!(sets.remove(EdgeSet::AccessEdge, &Prefix::new(Ipv4Addr::new(198, 18, 7, 0).into(), 32).unwrap()));
        sets.insert(EdgeSet::AccessEdge, p("198.19.1.0/24")).unwrap();
        assert_eq!(sets.lengths(false), vec![31, 30, 29, 28, 27, 26, 25, 24]);
    }

    /// The indexed overlap check and lookup agree with their definitions, on prefixes
    /// drawn from a small space so that nesting and collisions are frequent.
    #[test]
    fn indexed_overlap_and_lookup_match_the_definitions() {
        let mut rng = 0x2026_1129_u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut sets = AddressSets::default();
        let mut kept: Vec<(Prefix, EdgeSet)> = Vec::new();
        for _ in 0..3000 {
            let r = next();
            let (addr, width): (IpAddr, u8) = if r & 1 == 0 {
                (Ipv4Addr::new(198, 18, (r >> 8) as u8 & 3, (r >> 16) as u8).into(), 32)
            } else {
                (format!("2001:db8::{:x}:{:x}", (r >> 8) & 3, (r >> 16) & 0xff).parse::<Ipv6Addr>().unwrap().into(), 128)
            };
            let len = width - ((r >> 32) % edge_filter_common::MAX_PREFIX_LENS as u64) as u8;
            let prefix = Prefix { addr: mask(addr, len), len };
            let set = EdgeSet::ALL[((r >> 48) & 1) as usize];
            let clash = kept.iter().find(|(q, s)| *s != set && q.overlaps(&prefix)).copied();
            match (sets.insert(set, prefix), clash) {
                (Ok(()), None) => {
                    if !kept.contains(&(prefix, set)) {
                        kept.push((prefix, set));
                    }
                }
                (Err(AddrError::Overlap { .. }), Some(_)) => {}
                (got, want) => panic!("{prefix} into {set}: got {got:?}, a clash with {want:?} exists"),
            }
            let probe: IpAddr = if r & 1 == 0 {
                Ipv4Addr::new(198, 18, (r >> 40) as u8 & 3, (r >> 52) as u8).into()
            } else {
                format!("2001:db8::{:x}:{:x}", (r >> 40) & 3, (r >> 52) & 0xff).parse::<Ipv6Addr>().unwrap().into()
            };
            let want = kept.iter().filter(|(q, _)| q.contains(probe)).max_by_key(|(q, _)| q.len()).map(|(_, s)| *s);
            assert_eq!(sets.lookup(probe), want, "lookup {probe}");
        }
        assert_eq!(sets.len(), kept.len());
        assert!(kept.len() > 100, "the draw nests and clashes, yet fills the sets: {}", kept.len());
    }

    #[test]
    fn set_names_round_trip() {
        for s in EdgeSet::ALL {
            assert_eq!(s.name().parse::<EdgeSet>().unwrap(), s);
            assert_eq!(EdgeSet::from_bit(s.bit()), Some(s));
        }
        assert_eq!(
            "access_edge".parse::<EdgeSet>().unwrap_err().to_string(),
            "unknown address set `access_edge` (expected access-edge or internal-edge)"
        );
    }
}
