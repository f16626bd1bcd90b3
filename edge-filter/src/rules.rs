//! The rule table: rows of (protocol, port or range, source, destination), from the
//! vendor's tables by name, the administrator's Set-CsEdgeServer port settings, and the
//! operator's own rows; and its encoding for the kernel.
//!
//! Contract:
//! - A [`RuleTable`] that exists is valid: at most [`MAX_RULES`] rows, unique ids,
//!   every row names an edge set on at least one side (a row between two non-edge
//!   endpoints would police nothing), ports within 1-65535 and ranges not reversed.
//! - The vendor's tables (`../shared/docs/edge-tables.md` in the project's design):
//!   `xmpp-federation` (the default: the three rows of the seed table),
//!   `lync-edge-external` and `lync-edge-internal`. A row that two chosen tables share
//!   (the XMPP rows are in both a vendor table and `xmpp-federation`) is in the table
//!   once, where it first appears.
//! - A row whose source is an edge set opens from `edge` NICs and is answered on
//!   `outside`/`host` NICs; every other row opens from `outside`/`host` NICs and is
//!   answered from `edge` NICs ([`Row::opens_from_edge`]).
//! - [`RuleTable::compile`] gives the kernel's masks ([`Compiled`]) for a placement of
//!   rows in the kernel's row slots; [`place`] keeps each id in the slot it had, so
//!   that a reload does not move an id's hit counter or its flows to another row.

use std::{collections::BTreeMap, fmt, str::FromStr};

use edge_filter_common::{MAX_RULES, NAME_LEN, Rule, RuleTables, Ruleset, SetRows, set};

use crate::{
    addr::{AddressSets, SetId},
    names::named_enum,
};

/// Why a rule table was refused; each names the bad value.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("unknown table `{0}` (expected xmpp-federation, lync-edge-external or lync-edge-internal)")]
    UnknownTable(String),
    #[error("unknown port parameter `{0}` (expected one of {1})")]
    UnknownPort(String, String),
    #[error("row `{id}`: unknown set `{set}` (expected any, {expected})")]
    UnknownSet { id: String, set: String, expected: String },
    #[error("row `{0}`: names no edge set (access-edge, webconf-edge, av-edge, internal-edge) on either side, so it would police nothing")]
    NoEdgeSet(String),
    #[error("row `{0}` is defined twice")]
    DuplicateId(String),
    #[error("disable = `{0}`: no row of the table has this id")]
    DisableUnknown(String),
    #[error("`{0}`: a port from 1 to 65535, or a range such as 50000-59999")]
    BadPort(String),
    #[error("`{0}`: a range's first port must not be above its last")]
    Reversed(String),
    #[error("`{0}`: a row id of 1 to 32 letters, digits, `-` and `_`")]
    BadId(String),
    #[error("{have} rows: the table holds at most {max}")]
    TooManyRows { have: usize, max: u32 },
    #[error("MediaCommunicationPortStart {start} + MediaCommunicationPortCount {count} runs past port 65535")]
    MediaRange { start: u16, count: u16 },
}

named_enum! {
    /// A row's transport.
    #[derive(PartialOrd, Ord, Hash)]
    pub enum Proto ("proto") {
        Tcp = "tcp",
        Udp = "udp",
    }
}

impl Proto {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Tcp => 6,
            Udp => 17,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        Self::ALL.iter().copied().find(|p| p.number() == n)
    }
}

/// A port or an inclusive range of ports, within 1-65535.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    lo: u16,
    hi: u16,
}

impl PortRange {
    pub fn new(lo: u16, hi: u16) -> Result<Self, RuleError> {
        if lo == 0 {
            return Err(RuleError::BadPort(format!("{lo}-{hi}")));
        }
        if lo > hi {
            return Err(RuleError::Reversed(format!("{lo}-{hi}")));
        }
        Ok(Self { lo, hi })
    }

    pub fn single(port: u16) -> Result<Self, RuleError> {
        Self::new(port, port).map_err(|_| RuleError::BadPort(port.to_string()))
    }

    pub fn lo(self) -> u16 {
        self.lo
    }

    pub fn hi(self) -> u16 {
        self.hi
    }

    pub fn contains(self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi { write!(f, "{}", self.lo) } else { write!(f, "{}-{}", self.lo, self.hi) }
    }
}

impl FromStr for PortRange {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, RuleError> {
        let bad = || RuleError::BadPort(s.to_owned());
        let port = |p: &str| -> Result<u16, RuleError> {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)
        };
        match s.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (port(lo.trim())?, port(hi.trim())?);
                if lo > hi {
                    return Err(RuleError::Reversed(s.to_owned()));
                }
                Ok(Self { lo, hi })
            }
            None => Ok(Self::single(port(s.trim())?).expect("non-zero")),
        }
    }
}

/// A row's source or destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    Any,
    Set(SetId),
}

impl Endpoint {
    fn is_edge(self) -> bool {
        matches!(self, Endpoint::Set(s) if s.is_edge())
    }

    /// The kernel's encoding: a set index or [`set::ANY`].
    fn to_kernel(self) -> u8 {
        match self {
            Endpoint::Any => set::ANY,
            Endpoint::Set(s) => s.index(),
        }
    }

    fn from_kernel(v: u8) -> Option<Self> {
        if v == set::ANY { Some(Endpoint::Any) } else { SetId::from_index(u32::from(v)).map(Endpoint::Set) }
    }

    /// Whether an address with set mask `bits` matches.
    pub fn matches(self, bits: u32) -> bool {
        match self {
            Endpoint::Any => true,
            Endpoint::Set(s) => bits & s.bit() != 0,
        }
    }

    /// The name as the operator writes it.
    pub fn name(self, sets: &AddressSets) -> String {
        match self {
            Endpoint::Any => "any".to_owned(),
            Endpoint::Set(s) => sets.name(s).to_owned(),
        }
    }
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub id: String,
    pub proto: Proto,
    pub ports: PortRange,
    pub source: Endpoint,
    pub destination: Endpoint,
}

impl Row {
    /// Whether the row opens from `edge` NICs (its source is an edge set); otherwise it
    /// opens from `outside` and `host` NICs.
    pub fn opens_from_edge(&self) -> bool {
        self.source.is_edge()
    }

    /// The NIC roles the row opens from, as `check` and `status` print them.
    pub fn from_roles(&self) -> &'static str {
        if self.opens_from_edge() { "edge" } else { "outside, host" }
    }
}

/// The administrator's port settings, by the vendor's Set-CsEdgeServer parameter
/// names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgePorts {
    values: BTreeMap<&'static str, u16>,
}

/// Every parameter of the vendor's port tables, with its default.
pub const PORT_PARAMETERS: [(&str, u16); 14] = [
    ("XmppListeningPort", 5269),
    ("XmppInternalPort", 23456),
    ("AccessEdgeExternalSipPort", 5061),
    ("AccessEdgeInternalSipPort", 5061),
    ("AccessEdgeClientSipPort", 443),
    ("DataPsomClientPort", 443),
    ("DataPsomServerPort", 8057),
    ("MediaRelayExternalTurnUdpPort", 3478),
    ("MediaRelayExternalTurnTcpPort", 443),
    ("MediaRelayInternalTurnUdpPort", 3478),
    ("MediaRelayInternalTurnTcpPort", 443),
    ("MediaRelayAuthEdgePort", 5062),
    ("MediaCommunicationPortStart", 50000),
    ("MediaCommunicationPortCount", 10000),
];

impl Default for EdgePorts {
    fn default() -> Self {
        Self { values: PORT_PARAMETERS.into_iter().collect() }
    }
}

impl EdgePorts {
    /// Set a parameter. The value's range (1-65535) is the caller's to check.
    pub fn set(&mut self, name: &str, value: u16) -> Result<(), RuleError> {
        let key = PORT_PARAMETERS
            .iter()
            .map(|(k, _)| *k)
            .find(|k| *k == name)
            .ok_or_else(|| RuleError::UnknownPort(name.to_owned(), PORT_PARAMETERS.map(|(k, _)| k).join(", ")))?;
        self.values.insert(key, value);
        Ok(())
    }

    pub fn get(&self, name: &str) -> u16 {
        self.values.get(name).copied().unwrap_or(0)
    }

    /// The media range, MediaCommunicationPortStart for Count ports.
    fn media(&self) -> Result<PortRange, RuleError> {
        let (start, count) = (self.get("MediaCommunicationPortStart"), self.get("MediaCommunicationPortCount"));
        let last = u32::from(start) + u32::from(count.max(1)) - 1;
        let last = u16::try_from(last).map_err(|_| RuleError::MediaRange { start, count })?;
        PortRange::new(start, last)
    }
}

/// A vendor row's port.
#[derive(Clone, Copy)]
enum Port {
    Param(&'static str),
    Fixed(u16, u16),
    Media,
}

/// A vendor row: id, protocol, port, source, destination (set names or "any").
type Template = (&'static str, Proto, Port, &'static str, &'static str);

use Port::{Fixed, Media, Param};
use Proto::{Tcp, Udp};

const XMPP_FEDERATION: &[Template] = &[
    ("federation-in", Tcp, Param("XmppListeningPort"), "any", "access-edge"),
    ("federation-out", Tcp, Param("XmppListeningPort"), "access-edge", "any"),
    ("internal-mtls", Tcp, Param("XmppInternalPort"), "any", "internal-edge"),
];

const LYNC_EDGE_EXTERNAL: &[Template] = &[
    ("federation-in", Tcp, Param("XmppListeningPort"), "any", "access-edge"),
    ("federation-out", Tcp, Param("XmppListeningPort"), "access-edge", "any"),
    ("crl-out", Tcp, Fixed(80, 80), "access-edge", "any"),
    ("dns-tcp-out", Tcp, Fixed(53, 53), "access-edge", "any"),
    ("dns-udp-out", Udp, Fixed(53, 53), "access-edge", "any"),
    ("sip-client-in", Tcp, Param("AccessEdgeClientSipPort"), "any", "access-edge"),
    ("sip-federation-in", Tcp, Param("AccessEdgeExternalSipPort"), "any", "access-edge"),
    ("sip-federation-out", Tcp, Param("AccessEdgeExternalSipPort"), "access-edge", "any"),
    ("psom-in", Tcp, Param("DataPsomClientPort"), "any", "webconf-edge"),
    ("rtp-tcp-out", Tcp, Media, "av-edge", "any"),
    ("rtp-udp-out", Udp, Media, "av-edge", "any"),
    ("rtp-tcp-in", Tcp, Media, "any", "av-edge"),
    ("rtp-udp-in", Udp, Media, "any", "av-edge"),
    ("stun-udp-out", Udp, Param("MediaRelayExternalTurnUdpPort"), "av-edge", "any"),
    ("stun-udp-in", Udp, Param("MediaRelayExternalTurnUdpPort"), "any", "av-edge"),
    ("stun-tcp-in", Tcp, Param("MediaRelayExternalTurnTcpPort"), "any", "av-edge"),
    ("stun-tcp-out", Tcp, Param("MediaRelayExternalTurnTcpPort"), "av-edge", "any"),
];

const LYNC_EDGE_INTERNAL: &[Template] = &[
    ("internal-mtls", Tcp, Param("XmppInternalPort"), "any", "internal-edge"),
    ("sip-internal-in", Tcp, Param("AccessEdgeInternalSipPort"), "any", "internal-edge"),
    ("sip-internal-out", Tcp, Param("AccessEdgeInternalSipPort"), "internal-edge", "any"),
    ("psom-internal", Tcp, Param("DataPsomServerPort"), "any", "internal-edge"),
    ("av-auth", Tcp, Param("MediaRelayAuthEdgePort"), "any", "internal-edge"),
    ("stun-internal-udp", Udp, Param("MediaRelayInternalTurnUdpPort"), "any", "internal-edge"),
    ("stun-internal-tcp", Tcp, Param("MediaRelayInternalTurnTcpPort"), "any", "internal-edge"),
    ("cms-replication", Tcp, Fixed(4443, 4443), "any", "internal-edge"),
    ("logging", Tcp, Fixed(50001, 50003), "any", "internal-edge"),
];

/// The vendor's tables by name.
pub const TABLES: [&str; 3] = ["xmpp-federation", "lync-edge-external", "lync-edge-internal"];

fn table(name: &str) -> Option<&'static [Template]> {
    match name {
        "xmpp-federation" => Some(XMPP_FEDERATION),
        "lync-edge-external" => Some(LYNC_EDGE_EXTERNAL),
        "lync-edge-internal" => Some(LYNC_EDGE_INTERNAL),
        _ => None,
    }
}

/// A row as the operator writes it in `[[rule]]`, names not yet resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowSpec {
    pub id: String,
    pub proto: Proto,
    pub ports: PortRange,
    pub source: String,
    pub destination: String,
}

/// What the `[policy]` table and the `[[rule]]` rows say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSpec {
    pub tables: Vec<String>,
    pub disable: Vec<String>,
    pub ports: EdgePorts,
    pub rows: Vec<RowSpec>,
}

impl Default for TableSpec {
    fn default() -> Self {
        Self { tables: vec!["xmpp-federation".to_owned()], disable: Vec::new(), ports: EdgePorts::default(), rows: Vec::new() }
    }
}

/// A valid rule table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleTable {
    rows: Vec<Row>,
}

impl RuleTable {
    /// The built-in table: the vendor's XMPP federation table on its default ports.
    pub fn xmpp_federation(sets: &AddressSets) -> Self {
        Self::build(&TableSpec::default(), sets).expect("the built-in table is valid")
    }

    /// Resolve and check a spec against the sets it may name.
    pub fn build(spec: &TableSpec, sets: &AddressSets) -> Result<Self, RuleError> {
        let mut rows: Vec<Row> = Vec::new();
        let resolve = |id: &str, name: &str| -> Result<Endpoint, RuleError> {
            if name == "any" {
                return Ok(Endpoint::Any);
            }
            sets.set_named(name).map(Endpoint::Set).map_err(|_| RuleError::UnknownSet {
                id: id.to_owned(),
                set: name.to_owned(),
                expected: sets.sets().map(|s| sets.name(s)).collect::<Vec<_>>().join(", "),
            })
        };
        let media = spec.ports.media();
        for name in &spec.tables {
            let templates = table(name).ok_or_else(|| RuleError::UnknownTable(name.clone()))?;
            for (id, proto, port, source, destination) in templates {
                let ports = match port {
                    Param(p) => PortRange::single(spec.ports.get(p))?,
                    Fixed(lo, hi) => PortRange::new(*lo, *hi)?,
                    Media => media.clone()?,
                };
                let row = Row { id: (*id).to_owned(), proto: *proto, ports, source: resolve(id, source)?, destination: resolve(id, destination)? };
                if !rows.iter().any(|r| r.id == row.id) {
                    rows.push(row);
                }
            }
        }
        for d in &spec.disable {
            let before = rows.len();
            rows.retain(|r| &r.id != d);
            if rows.len() == before {
                return Err(RuleError::DisableUnknown(d.clone()));
            }
        }
        for r in &spec.rows {
            check_id(&r.id)?;
            if rows.iter().any(|x| x.id == r.id) {
                return Err(RuleError::DuplicateId(r.id.clone()));
            }
            let row = Row {
                id: r.id.clone(),
                proto: r.proto,
                ports: r.ports,
                source: resolve(&r.id, &r.source)?,
                destination: resolve(&r.id, &r.destination)?,
            };
            if !row.source.is_edge() && !row.destination.is_edge() {
                return Err(RuleError::NoEdgeSet(row.id));
            }
            rows.push(row);
        }
        if rows.len() > MAX_RULES as usize {
            return Err(RuleError::TooManyRows { have: rows.len(), max: MAX_RULES });
        }
        Ok(Self { rows })
    }

    /// A table of rows read back from the kernel, which only ever holds a table that
    /// was checked before it was written.
    pub fn from_rows(rows: Vec<Row>) -> Self {
        Self { rows }
    }

    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// The masks the kernel reads, for rows placed in `slots` (`slots[i]` is the row
    /// slot of `rows()[i]`).
    pub fn compile(&self, slots: &[usize]) -> Compiled {
        let mut c = Compiled {
            ports: [Vec::new(), Vec::new()],
            set_rows: vec![SetRows::default(); 512],
            ruleset: Ruleset::default(),
            rules: vec![Rule::default(); MAX_RULES as usize],
        };
        for (position, (row, &slot)) in self.rows.iter().zip(slots).enumerate() {
            let bit = 1u64 << slot;
            let proto = usize::from(row.proto == Udp);
            c.ports[proto].push((row.ports, bit));
            c.ruleset.opens[if row.opens_from_edge() { Ruleset::EDGE } else { Ruleset::OUTSIDE }] |= bit;
            for half in 0..2u32 {
                for byte in 0..256u32 {
                    let bits = byte << (8 * half);
                    let entry = &mut c.set_rows[(half * 256 + byte) as usize];
                    // "any" rows go into the low half only, so that the two halves'
                    // union holds them once and an address in no set matches them.
                    let matches = |e: Endpoint| match e {
                        Endpoint::Any => half == 0,
                        Endpoint::Set(s) => bits & s.bit() != 0,
                    };
                    if matches(row.source) {
                        entry.src |= bit;
                    }
                    if matches(row.destination) {
                        entry.dst |= bit;
                    }
                }
            }
            c.rules[slot] = row.to_kernel(position);
        }
        c
    }

    /// The rows the kernel's table holds, with their slots, in the table's order, if
    /// they are ones this version writes.
    pub fn from_kernel(rules: &[Rule]) -> Option<Vec<(usize, Row)>> {
        let mut out = Vec::new();
        let mut positions = Vec::new();
        for (slot, r) in rules.iter().enumerate() {
            if r.id == [0; NAME_LEN] {
                continue;
            }
            let id = edge_filter_common::name_of(&r.id)?.to_owned();
            let row = Row {
                id,
                proto: Proto::from_number(r.proto)?,
                ports: PortRange::new(r.lo, r.hi).ok()?,
                source: Endpoint::from_kernel(r.src)?,
                destination: Endpoint::from_kernel(r.dst)?,
            };
            out.push((slot, row));
            positions.push(r.position);
        }
        let mut order: Vec<usize> = (0..out.len()).collect();
        order.sort_by_key(|i| positions[*i]);
        Some(order.into_iter().map(|i| out[i].clone()).collect())
    }
}

impl Row {
    fn to_kernel(&self, position: usize) -> Rule {
        let mut id = [0u8; NAME_LEN];
        id[..self.id.len()].copy_from_slice(self.id.as_bytes());
        Rule {
            id,
            lo: self.ports.lo,
            hi: self.ports.hi,
            proto: self.proto.number(),
            src: self.source.to_kernel(),
            dst: self.destination.to_kernel(),
            position: position as u8,
        }
    }
}

fn check_id(id: &str) -> Result<(), RuleError> {
    if id.is_empty() || id.len() > NAME_LEN || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(RuleError::BadId(id.to_owned()));
    }
    Ok(())
}

/// Slots for `table`'s rows: an id keeps the slot it has in `current` (the ids of the
/// kernel's slots), a new id takes the lowest free slot. Returns the slot of each row
/// and the slots handed to new ids (their counters are to be zeroed).
pub fn place(current: &[Option<String>], table: &RuleTable) -> (Vec<usize>, Vec<usize>) {
    let mut taken = vec![false; MAX_RULES as usize];
    let mut slots = vec![usize::MAX; table.rows.len()];
    for (i, row) in table.rows.iter().enumerate() {
        if let Some(s) = current.iter().position(|c| c.as_deref() == Some(row.id.as_str()))
            && s < taken.len()
        {
            slots[i] = s;
            taken[s] = true;
        }
    }
    let mut fresh = Vec::new();
    for slot in slots.iter_mut().filter(|s| **s == usize::MAX) {
        let free = taken.iter().position(|t| !t).expect("at most MAX_RULES rows");
        taken[free] = true;
        *slot = free;
        fresh.push(free);
    }
    (slots, fresh)
}

/// One row as `check` and `status` show it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RowView {
    pub id: String,
    pub proto: &'static str,
    pub port: String,
    pub source: String,
    pub destination: String,
    pub opens_from: &'static str,
}

impl RuleTable {
    /// The effective table, row by row, with set names resolved.
    pub fn view(&self, sets: &AddressSets) -> Vec<RowView> {
        self.rows
            .iter()
            .map(|r| RowView {
                id: r.id.clone(),
                proto: r.proto.name(),
                port: r.ports.to_string(),
                source: r.source.name(sets),
                destination: r.destination.name(sets),
                opens_from: r.from_roles(),
            })
            .collect()
    }

    /// The effective table as a text table.
    pub fn render(&self, sets: &AddressSets) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(out, "{:<22} {:<5} {:<11} {:<16} {:<16} OPENS FROM", "ROW", "PROTO", "PORT", "SOURCE", "DESTINATION");
        for r in self.view(sets) {
            let _ = writeln!(out, "{:<22} {:<5} {:<11} {:<16} {:<16} {}", r.id, r.proto, r.port, r.source, r.destination, r.opens_from);
        }
        out
    }
}

/// The kernel's encoding of a placed table.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// Per protocol (TCP, UDP): each row's ports with its bit.
    pub ports: [Vec<(PortRange, u64)>; 2],
    /// [`RuleTables::set_rows`]: low half then high half, 256 entries each.
    pub set_rows: Vec<SetRows>,
    pub ruleset: Ruleset,
    /// `RULES` of one generation, slot by slot.
    pub rules: Vec<Rule>,
}

impl Compiled {
    /// One generation of `RULE_TABLES`, as the kernel reads it.
    pub fn tables(&self) -> Box<RuleTables> {
        // SAFETY: `RuleTables` is integers only; all zeros is a valid value.
        let mut t: Box<RuleTables> = unsafe { Box::new_zeroed().assume_init() };
        for (proto, ranges) in self.ports.iter().enumerate() {
            for (range, bit) in ranges {
                for mask in &mut t.ports[proto][usize::from(range.lo())..=usize::from(range.hi())] {
                    *mask |= bit;
                }
            }
        }
        t.set_rows.copy_from_slice(&self.set_rows);
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sets() -> AddressSets {
        let mut s = AddressSets::default();
        s.add_peer("partners").unwrap();
        s
    }

    fn spec(tables: &[&str]) -> TableSpec {
        TableSpec { tables: tables.iter().map(|t| t.to_string()).collect(), ..TableSpec::default() }
    }

    fn row(id: &str, proto: &str, port: &str, source: &str, destination: &str) -> RowSpec {
        RowSpec { id: id.into(), proto: proto.parse().unwrap(), ports: port.parse().unwrap(), source: source.into(), destination: destination.into() }
    }

    #[test]
    fn the_default_is_the_seed_table() {
        let t = RuleTable::xmpp_federation(&sets());
        let ids: Vec<_> = t.rows().iter().map(|r| (r.id.as_str(), r.ports.to_string(), r.from_roles())).collect();
        assert_eq!(
            ids,
            [
                ("federation-in", "5269".into(), "outside, host"),
                ("federation-out", "5269".into(), "edge"),
                ("internal-mtls", "23456".into(), "outside, host")
            ]
        );
    }

    #[test]
    fn vendor_tables_share_their_xmpp_rows_once_and_take_the_administrators_ports() {
        let mut s = spec(&["xmpp-federation", "lync-edge-external", "lync-edge-internal"]);
        s.ports.set("XmppListeningPort", 5270).unwrap();
        s.ports.set("MediaCommunicationPortStart", 40000).unwrap();
        s.ports.set("MediaCommunicationPortCount", 100).unwrap();
        let t = RuleTable::build(&s, &sets()).unwrap();
        assert_eq!(t.rows().len(), 3 + 15 + 8);
        let get = |id: &str| t.rows().iter().find(|r| r.id == id).unwrap().clone();
        assert_eq!(get("federation-out").ports.to_string(), "5270");
        assert_eq!(get("rtp-udp-in").ports.to_string(), "40000-40099");
        assert_eq!(get("logging").ports.to_string(), "50001-50003");
        assert_eq!(get("stun-udp-in").proto, Udp);
        assert_eq!(get("stun-udp-in").destination, Endpoint::Set(SetId::AV_EDGE));
        assert!(get("sip-internal-out").opens_from_edge());
    }

    #[test]
    fn each_bad_table_is_refused_naming_the_value() {
        let s = sets();
        let with_rows = |rows: Vec<RowSpec>| TableSpec { rows, ..TableSpec::default() };
        for (spec, want) in [
            (spec(&["lync-edge"]), "unknown table `lync-edge`"),
            (TableSpec { disable: vec!["sip-client-in".into()], ..TableSpec::default() }, "disable = `sip-client-in`: no row"),
            (with_rows(vec![row("x", "tcp", "22", "any", "partners")]), "row `x`: names no edge set"),
            (with_rows(vec![row("x", "tcp", "22", "any", "nowhere")]), "row `x`: unknown set `nowhere` (expected any, access-edge,"),
            (with_rows(vec![row("federation-in", "tcp", "22", "any", "access-edge")]), "row `federation-in` is defined twice"),
            (with_rows(vec![row("bad id", "tcp", "22", "any", "access-edge")]), "`bad id`: a row id"),
            (with_rows((0..62).map(|i| row(&format!("r{i}"), "tcp", "22", "any", "access-edge")).collect()), "65 rows: the table holds at most 64"),
        ] {
            let e = RuleTable::build(&spec, &s).unwrap_err().to_string();
            assert!(e.starts_with(want), "got {e}\nwant {want}");
        }
        let mut big = TableSpec::default();
        big.ports.set("MediaCommunicationPortStart", 60000).unwrap();
        big.tables = vec!["lync-edge-external".into()];
        assert_eq!(
            RuleTable::build(&big, &s).unwrap_err().to_string(),
            "MediaCommunicationPortStart 60000 + MediaCommunicationPortCount 10000 runs past port 65535"
        );
        assert!(EdgePorts::default().set("XmppPort", 1).unwrap_err().to_string().starts_with("unknown port parameter `XmppPort`"));
        for (input, want) in [
            ("0", "`0`: a port from 1 to 65535"),
            ("65536", "`65536`: a port"),
            ("60000-50000", "`60000-50000`: a range's first port must not be above its last"),
            ("5-", "`5-`: a port"),
            ("x", "`x`: a port"),
        ] {
            assert!(input.parse::<PortRange>().unwrap_err().to_string().starts_with(want), "{input}");
        }
        assert_eq!("sctp".parse::<Proto>().unwrap_err().to_string(), "unknown proto `sctp` (expected tcp or udp)");
    }

    #[test]
    fn compiled_masks_select_exactly_the_rows_a_packet_matches() {
        let s = sets();
        let partners = s.set_named("partners").unwrap();
        let mut spec = spec(&["lync-edge-external"]);
        spec.rows.push(row("from-partners", "udp", "123", "partners", "access-edge"));
        let t = RuleTable::build(&spec, &s).unwrap();
        let (slots, fresh) = place(&[], &t);
        assert_eq!(fresh.len(), t.rows().len());
        let c = t.compile(&slots);
        let tables = c.tables();
        let set_mask = |bits: u32, src: bool| {
            let lo = tables.set_rows[(bits & 0xff) as usize];
            let hi = tables.set_rows[256 + ((bits >> 8) & 0xff) as usize];
            if src { lo.src | hi.src } else { lo.dst | hi.dst }
        };
        // Brute force: every row against a handful of packets.
        for (proto, port, src_bits, dst_bits) in [
            (0usize, 5269u16, 0u32, SetId::ACCESS_EDGE.bit()),
            (0, 443, 0, SetId::ACCESS_EDGE.bit() | SetId::AV_EDGE.bit()),
            (1, 55555, SetId::AV_EDGE.bit(), 0),
            (1, 123, partners.bit(), SetId::ACCESS_EDGE.bit()),
            (1, 123, 0, SetId::ACCESS_EDGE.bit()),
            (0, 22, 0, SetId::ACCESS_EDGE.bit()),
        ] {
            let got = tables.ports[proto][usize::from(port)] & set_mask(src_bits, true) & set_mask(dst_bits, false);
            let want = t.rows().iter().zip(&slots).fold(0u64, |m, (r, slot)| {
                let hit =
                    usize::from(r.proto == Udp) == proto && r.ports.contains(port) && r.source.matches(src_bits) && r.destination.matches(dst_bits);
                if hit { m | 1 << slot } else { m }
            });
            assert_eq!(got, want, "proto {proto} port {port} {src_bits:#x} -> {dst_bits:#x}");
        }
        let back = RuleTable::from_kernel(&c.rules).unwrap();
        assert_eq!(back.into_iter().map(|(_, r)| r).collect::<Vec<_>>(), t.rows());
    }

    #[test]
    fn ids_keep_their_slots_across_a_new_table() {
        let s = sets();
        let t1 = RuleTable::build(&spec(&["xmpp-federation"]), &s).unwrap();
        let (slots, _) = place(&[], &t1);
        assert_eq!(slots, [0, 1, 2]);
        let current: Vec<Option<String>> = vec![Some("federation-in".into()), None, Some("internal-mtls".into())];
        let mut spec2 = spec(&["xmpp-federation"]);
        spec2.disable = vec!["federation-out".into()];
        spec2.rows.push(row("extra", "tcp", "1-2", "any", "access-edge"));
        let t2 = RuleTable::build(&spec2, &s).unwrap();
        let (slots, fresh) = place(&current, &t2);
        assert_eq!(slots, [0, 2, 1]);
        assert_eq!(fresh, [1]);
    }
}
