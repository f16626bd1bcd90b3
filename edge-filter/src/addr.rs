//! Address sets as the operator writes them and as the kernel looks them up.
//!
//! Contract:
//! - A [`Prefix`] is an address with a prefix length, IPv4 or IPv6; a bare address is
//!   a host prefix (/32, /128). Host bits beyond the prefix are refused rather than
//!   silently cleared: `203.0.113.10/24` is more likely a typo than a network.
//! - [`AddressSets`] holds the four edge sets (`access-edge`, `webconf-edge`,
//!   `av-edge`, `internal-edge`: policed) and the operator's peer sets (match-only),
//!   at most [`edge_filter_common::MAX_SETS`] in all. An address may be in several
//!   sets (a single-IP Edge puts its three external services on one address); a
//!   lookup gives every set that holds it, as a mask of [`SetId::bit`]s.
//! - The kernel key is the prefix length and the network address in network order;
//!   its value has the prefix's own sets and the sets of every prefix containing it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use edge_filter_common::{MAX_SETS, set};

/// Why an address, prefix or set name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddrError {
    #[error("`{input}` is not an IP address or prefix (expected e.g. 203.0.113.10, 2001:db8::/64)")]
    Parse { input: String },
    #[error("`{input}`: prefix length {len} is longer than {max} bits")]
    PrefixTooLong { input: String, len: u32, max: u32 },
    #[error("`{input}` has host bits set beyond /{len}; did you mean {network}?")]
    HostBits { input: String, len: u8, network: Prefix },
    #[error("unknown address set `{input}` (expected {expected})")]
    UnknownSet { input: String, expected: String },
    #[error("set `{name}`: {why}")]
    BadSetName { name: String, why: String },
    #[error("peer set `{name}`: at most {max} sets in all, the four edge sets included")]
    TooManySets { name: String, max: u32 },
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

    /// Whether `addr` lies inside the prefix.
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.overlaps(&Prefix::host(addr))
    }
}

/// `addr` with every bit after the first `len` cleared, by the arithmetic the kernel
/// program masks with.
fn mask(addr: IpAddr, len: u8) -> IpAddr {
    use edge_filter_common::hint::{mask6, mask32};
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
                AddrError::HostBits { len, network, .. } => AddrError::HostBits { input: input.to_owned(), len, network },
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

/// An address set: one of the four edge sets, or a peer set the config names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SetId(u8);

impl SetId {
    pub const ACCESS_EDGE: SetId = SetId(set::ACCESS_EDGE as u8);
    pub const WEBCONF_EDGE: SetId = SetId(set::WEBCONF_EDGE as u8);
    pub const AV_EDGE: SetId = SetId(set::AV_EDGE as u8);
    pub const INTERNAL_EDGE: SetId = SetId(set::INTERNAL_EDGE as u8);
    /// The edge sets, in index order.
    pub const EDGE: [SetId; set::EDGE_COUNT as usize] = [SetId::ACCESS_EDGE, SetId::WEBCONF_EDGE, SetId::AV_EDGE, SetId::INTERNAL_EDGE];

    /// The set of a kernel index, if it is one.
    pub fn from_index(index: u32) -> Option<Self> {
        (index < MAX_SETS).then_some(SetId(index as u8))
    }

    pub fn index(self) -> u8 {
        self.0
    }

    /// Whether addresses in this set are policed.
    pub fn is_edge(self) -> bool {
        u32::from(self.0) < set::EDGE_COUNT
    }

    /// The bit of this set in a set mask.
    pub fn bit(self) -> u32 {
        1 << self.0
    }

    /// The name of an edge set (`None` for a peer set, whose name the sets hold).
    pub fn edge_name(self) -> Option<&'static str> {
        set::EDGE_NAMES.get(usize::from(self.0)).copied()
    }
}

/// The address sets, edge and peer, as the operator wrote them.
///
/// Every operation is logarithmic in the number of prefixes (a lookup probes each
/// prefix length present), so sets of 100k prefixes load as fast as the kernel takes
/// them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressSets {
    /// Set names by index: the edge sets, then the peer sets.
    names: Vec<String>,
    entries: BTreeSet<(Prefix, SetId)>,
    /// Entries per family: IPv4, IPv6.
    counts: [usize; 2],
    /// Entries per prefix length, per family.
    lens: [BTreeMap<u8, usize>; 2],
}

impl Default for AddressSets {
    fn default() -> Self {
        Self { names: set::EDGE_NAMES.iter().map(|n| n.to_string()).collect(), entries: BTreeSet::new(), counts: [0; 2], lens: Default::default() }
    }
}

impl AddressSets {
    /// Declare a peer set; it gets the next free index.
    pub fn add_peer(&mut self, name: &str) -> Result<SetId, AddrError> {
        let bad = |why: &str| AddrError::BadSetName { name: name.to_owned(), why: why.to_owned() };
        if self.names.iter().any(|n| n == name) {
            return Err(bad("the name is taken"));
        }
        if name == "any" {
            return Err(bad("`any` means every address"));
        }
        if name.is_empty() || name.len() > edge_filter_common::NAME_LEN || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad(&format!("a name of 1 to {} letters, digits, `-` and `_`", edge_filter_common::NAME_LEN)));
        }
        if self.names.len() >= MAX_SETS as usize {
            return Err(AddrError::TooManySets { name: name.to_owned(), max: MAX_SETS });
        }
        self.names.push(name.to_owned());
        Ok(SetId(self.names.len() as u8 - 1))
    }

    /// The set of this name.
    pub fn set_named(&self, name: &str) -> Result<SetId, AddrError> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| SetId(i as u8))
            .ok_or_else(|| AddrError::UnknownSet { input: name.to_owned(), expected: self.names.join(", ") })
    }

    /// The name of a set.
    pub fn name(&self, id: SetId) -> &str {
        self.names.get(usize::from(id.0)).map_or("unknown", String::as_str)
    }

    /// Every set, edge sets first.
    pub fn sets(&self) -> impl Iterator<Item = SetId> + '_ {
        (0..self.names.len()).map(|i| SetId(i as u8))
    }

    /// The peer sets.
    pub fn peers(&self) -> impl Iterator<Item = SetId> + '_ {
        self.sets().filter(|s| !s.is_edge())
    }

    /// Add `prefix` to `set`. Adding a prefix the set already has is a no-op.
    pub fn insert(&mut self, set: SetId, prefix: Prefix) -> Result<(), AddrError> {
        self.insert_checked(set, prefix, true)
    }

    /// Add what the kernel's tables hold: as [`AddressSets::insert`], but more than
    /// [`edge_filter_common::MAX_PREFIX_LENS`] lengths are taken, so that the tables
    /// left by an interrupted change can be read and put right.
    pub fn insert_read(&mut self, set: SetId, prefix: Prefix) -> Result<(), AddrError> {
        self.insert_checked(set, prefix, false)
    }

    fn insert_checked(&mut self, set: SetId, prefix: Prefix, limit_lengths: bool) -> Result<(), AddrError> {
        if self.entries.contains(&(prefix, set)) {
            return Ok(());
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
    pub fn remove(&mut self, set: SetId, prefix: &Prefix) -> bool {
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

    /// Every `(prefix, set)`, ordered by prefix.
    pub fn iter(&self) -> impl Iterator<Item = (Prefix, SetId)> + '_ {
        self.entries.iter().copied()
    }

    /// The mask of the sets that hold exactly this prefix.
    pub fn own(&self, prefix: &Prefix) -> u32 {
        let first = (*prefix, SetId(0));
        let last = (*prefix, SetId(u8::MAX));
        self.entries.range(first..=last).fold(0, |m, (_, s)| m | s.bit())
    }

    /// The mask of the sets that hold every address of this prefix: its own sets and
    /// those of every shorter prefix that contains it.
    pub fn all(&self, prefix: &Prefix) -> u32 {
        let fam = usize::from(prefix.addr.is_ipv6());
        self.lens[fam].keys().filter(|l| **l <= prefix.len).fold(0, |m, l| m | self.own(&Prefix { addr: mask(prefix.addr, *l), len: *l }))
    }

    /// The distinct prefixes, each once.
    pub fn prefixes(&self) -> impl Iterator<Item = Prefix> + '_ {
        let mut last = None;
        self.entries.iter().filter_map(move |(p, _)| {
            if last == Some(*p) {
                return None;
            }
            last = Some(*p);
            Some(*p)
        })
    }

    /// Whether `set` holds exactly this prefix.
    pub fn contains(&self, set: SetId, prefix: &Prefix) -> bool {
        self.entries.contains(&(*prefix, set))
    }

    /// The prefixes of one set.
    pub fn of(&self, set: SetId) -> impl Iterator<Item = Prefix> + '_ {
        self.entries.iter().filter(move |(_, s)| *s == set).map(|(p, _)| *p)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The mask of every set `addr` is in.
    pub fn lookup(&self, addr: IpAddr) -> u32 {
        self.all(&Prefix::host(addr))
    }

    /// Pairs of entries of different sets that share addresses, for `check` to show:
    /// (prefix, its set, the containing or equal prefix, that one's set).
    pub fn overlaps(&self) -> Vec<(Prefix, SetId, Prefix, SetId)> {
        let mut out = Vec::new();
        for (p, s) in self.iter() {
            let fam = usize::from(p.addr.is_ipv6());
            for l in self.lens[fam].keys().filter(|l| **l <= p.len) {
                let outer = Prefix { addr: mask(p.addr, *l), len: *l };
                for (q, t) in self.entries.range((outer, SetId(0))..=(outer, SetId(u8::MAX))) {
                    if t != &s && (q.len < p.len || t > &s) {
                        out.push((p, s, *q, *t));
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use rand::{RngCore as _, SeedableRng as _, rngs::SmallRng};

    use super::*;

    /// The prefix `s` says; the other modules' tests write theirs with it too.
    pub(crate) fn p(s: &str) -> Prefix {
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
            ("203.0.113.10/24", "`203.0.113.10/24` has host bits set beyond /24; did you mean 203.0.113.0/24?"),
            ("2001:db8::1/64", "`2001:db8::1/64` has host bits set beyond /64; did you mean 2001:db8::/64?"),
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
    fn an_address_may_be_in_several_sets_and_lookup_gives_them_all() {
        let mut sets = AddressSets::default();
        sets.insert(SetId::ACCESS_EDGE, p("203.0.113.0/24")).unwrap();
        sets.insert(SetId::ACCESS_EDGE, p("203.0.113.10")).unwrap();
        sets.insert(SetId::AV_EDGE, p("203.0.113.10")).unwrap();
        sets.insert(SetId::INTERNAL_EDGE, p("192.0.2.10")).unwrap();
        let partners = sets.add_peer("partners").unwrap();
        sets.insert(partners, p("198.51.100.0/24")).unwrap();
        assert_eq!(sets.len(), 5);
        let bits = |ids: &[SetId]| ids.iter().fold(0, |m, s| m | s.bit());
        assert_eq!(sets.lookup("203.0.113.99".parse().unwrap()), bits(&[SetId::ACCESS_EDGE]));
        assert_eq!(sets.lookup("203.0.113.10".parse().unwrap()), bits(&[SetId::ACCESS_EDGE, SetId::AV_EDGE]));
        assert_eq!(sets.lookup("192.0.2.10".parse().unwrap()), bits(&[SetId::INTERNAL_EDGE]));
        assert_eq!(sets.lookup("198.51.100.20".parse().unwrap()), partners.bit());
        assert_eq!(sets.lookup("192.0.2.11".parse().unwrap()), 0);
        assert_eq!(sets.own(&p("203.0.113.10")), bits(&[SetId::ACCESS_EDGE, SetId::AV_EDGE]));
        assert_eq!(
            sets.overlaps(),
            vec![
                (p("203.0.113.10"), SetId::ACCESS_EDGE, p("203.0.113.10"), SetId::AV_EDGE),
                (p("203.0.113.10"), SetId::AV_EDGE, p("203.0.113.0/24"), SetId::ACCESS_EDGE),
            ],
            "nesting inside one set is no overlap; the same address in two sets, or inside another set's prefix, is"
        );
        assert!(sets.remove(SetId::ACCESS_EDGE, &p("203.0.113.0/24")));
        assert!(!sets.remove(SetId::ACCESS_EDGE, &p("203.0.113.0/24")));
        assert_eq!(sets.of(SetId::ACCESS_EDGE).collect::<Vec<_>>(), vec![p("203.0.113.10")]);
        assert_eq!(sets.overlaps(), vec![(p("203.0.113.10"), SetId::ACCESS_EDGE, p("203.0.113.10"), SetId::AV_EDGE)]);
    }

    #[test]
    fn peer_sets_are_named_and_counted() {
        let mut sets = AddressSets::default();
        assert_eq!(sets.set_named("av-edge").unwrap(), SetId::AV_EDGE);
        let a = sets.add_peer("partners").unwrap();
        assert_eq!((a.index(), a.is_edge(), sets.name(a)), (4, false, "partners"));
        assert_eq!(sets.add_peer("partners").unwrap_err().to_string(), "set `partners`: the name is taken");
        assert_eq!(sets.add_peer("access-edge").unwrap_err().to_string(), "set `access-edge`: the name is taken");
        assert!(sets.add_peer("any").is_err());
        assert!(sets.add_peer("bad name").is_err());
        for i in 1..12 {
            sets.add_peer(&format!("p{i}")).unwrap();
        }
        assert_eq!(sets.add_peer("one-more").unwrap_err().to_string(), "peer set `one-more`: at most 16 sets in all, the four edge sets included");
        assert_eq!(
            sets.set_named("acess-edge").unwrap_err().to_string(),
            "unknown address set `acess-edge` (expected access-edge, webconf-edge, av-edge, internal-edge, partners, \
             p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11)"
        );
    }

    #[test]
    fn sets_refuse_a_ninth_prefix_length_per_family() {
        let mut sets = AddressSets::default();
        for (i, len) in (25..=32).enumerate() {
            let addr = Ipv4Addr::new(198, 18, i as u8, 0);
            sets.insert(SetId::ACCESS_EDGE, Prefix::new(addr.into(), len).unwrap()).unwrap();
        }
        assert_eq!(sets.lengths(false), vec![32, 31, 30, 29, 28, 27, 26, 25]);
        let err = sets.insert(SetId::ACCESS_EDGE, p("198.19.0.0/24")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "198.19.0.0/24: the sets hold prefixes of at most 8 different lengths per address family \
             (they have /25 /26 /27 /28 /29 /30 /31 /32)"
        );
        // What the kernel's tables hold is read back whatever its lengths: an
        // interrupted change can leave more, and reading them is how it is put right.
        let mut read = sets.clone();
        read.insert_read(SetId::ACCESS_EDGE, p("198.19.0.0/24")).unwrap();
        assert_eq!(read.lengths(false).len(), 9);
        // Another prefix of a length already there, and the other family, still fit.
        sets.insert(SetId::ACCESS_EDGE, p("198.19.0.0/25")).unwrap();
        sets.insert(SetId::INTERNAL_EDGE, p("2001:db8::/64")).unwrap();
        // A length whose last prefix goes is free again.
        assert!(sets.remove(SetId::ACCESS_EDGE, &Prefix::new(Ipv4Addr::new(198, 18, 7, 0).into(), 32).unwrap()));
        sets.insert(SetId::ACCESS_EDGE, p("198.19.1.0/24")).unwrap();
        assert_eq!(sets.lengths(false), vec![31, 30, 29, 28, 27, 26, 25, 24]);
    }

    /// The indexed lookup agrees with its definition, on prefixes drawn from a small
    /// space so that nesting and sharing are frequent.
    #[test]
    fn indexed_lookup_matches_the_definition() {
        let mut rng = SmallRng::seed_from_u64(0x2026_1129);
        let mut next = move || rng.next_u64();
        let mut sets = AddressSets::default();
        let mut kept: Vec<(Prefix, SetId)> = Vec::new();
        for _ in 0..3000 {
            let r = next();
            let (addr, width): (IpAddr, u8) = if r & 1 == 0 {
                (Ipv4Addr::new(198, 18, (r >> 8) as u8 & 3, (r >> 16) as u8).into(), 32)
            } else {
                (format!("2001:db8::{:x}:{:x}", (r >> 8) & 3, (r >> 16) & 0xff).parse::<Ipv6Addr>().unwrap().into(), 128)
            };
            let len = width - ((r >> 32) % edge_filter_common::MAX_PREFIX_LENS as u64) as u8;
            let prefix = Prefix { addr: mask(addr, len), len };
            let set = SetId::EDGE[((r >> 48) & 3) as usize];
            sets.insert(set, prefix).unwrap();
            if !kept.contains(&(prefix, set)) {
                kept.push((prefix, set));
            }
            let probe: IpAddr = if r & 1 == 0 {
                Ipv4Addr::new(198, 18, (r >> 40) as u8 & 3, (r >> 52) as u8).into()
            } else {
                format!("2001:db8::{:x}:{:x}", (r >> 40) & 3, (r >> 52) & 0xff).parse::<Ipv6Addr>().unwrap().into()
            };
            let want = kept.iter().filter(|(q, _)| q.contains(probe)).fold(0, |m, (_, s)| m | s.bit());
            assert_eq!(sets.lookup(probe), want, "lookup {probe}");
        }
        assert_eq!(sets.len(), kept.len());
        assert!(kept.len() > 100, "the draw nests and shares, yet fills the sets: {}", kept.len());
    }

    #[test]
    fn set_ids_are_kernel_indexes() {
        for (i, s) in SetId::EDGE.into_iter().enumerate() {
            assert_eq!(SetId::from_index(i as u32), Some(s));
            assert_eq!(s.bit(), 1 << i);
            assert!(s.is_edge());
            assert_eq!(s.edge_name(), Some(set::EDGE_NAMES[i]));
        }
        assert_eq!(SetId::from_index(16), None);
        assert!(!SetId::from_index(4).unwrap().is_edge());
    }
}
