//! The state tables in the maps: flows, both handshake tables, UDP flows, and the
//! per-source flow counts; read whole in batches, written only by the daemon's
//! recount and by benchmarks that fill the tables.
//!
//! Contract: each kind of table is two maps, IPv6 (keyed by `FlowKey`) and IPv4
//! (keyed by `FlowKey4`, the protocol the table's); what is read here is both, each
//! entry as a `FlowKey`, and what is written goes to the map of its family. Every
//! removal tolerates an entry the kernel removed meanwhile; the per-source counts are
//! recounted from the live flows as the kernel forms them.

use std::collections::BTreeMap;

use aya::maps::{HashMap, IterableMap as _, MapData};
use edge_filter_common::{Flow, FlowKey, FlowKey4, Settings, SourceKey, event as e, hint, ipproto, map};

use super::{Error, Maps, map_err, maps::remove};
use crate::census::{Census, FlowEvents, flow_is_live};

impl Maps {
    fn table_size(table: &HashMap<MapData, FlowKey, Flow>, name: &'static str) -> Result<u32, Error> {
        Ok(table.map().info().map_err(map_err(name))?.max_entries())
    }

    /// The flow table's size.
    pub fn max_flows(&self) -> Result<u32, Error> {
        Self::table_size(&self.flows, map::FLOWS)
    }

    /// The embryonic table's size.
    pub fn max_embryos(&self) -> Result<u32, Error> {
        Self::table_size(&self.embryos, map::EMBRYOS)
    }

    /// The size of the table of handshakes the trusted side opened.
    pub fn max_embryos_out(&self) -> Result<u32, Error> {
        Self::table_size(&self.embryos_out, map::EMBRYOS_OUT)
    }

    /// The UDP flow table's size.
    pub fn max_udp_flows(&self) -> Result<u32, Error> {
        Self::table_size(&self.udp_flows, map::UDP_FLOWS)
    }

    /// Every entry of a kind of table, both families, each with its tuple.
    pub(crate) fn each_flow(&self, table: &Table, mut visit: impl FnMut(&FlowKey, &Flow)) -> Result<(), Error> {
        self.each::<FlowKey, Flow>(table.v6, &mut visit)?;
        self.each::<FlowKey4, Flow>(table.v4, |k, v| visit(&k.tuple(table.proto), v))
    }

    fn table(&self, table: &Table) -> Result<BTreeMap<FlowKeyOrd, Flow>, Error> {
        let mut out = BTreeMap::new();
        self.each_flow(table, |k, v| {
            out.insert(FlowKeyOrd(*k), *v);
        })?;
        Ok(out)
    }

    /// Every flow whose handshake completed.
    pub fn flows(&self) -> Result<BTreeMap<FlowKeyOrd, Flow>, Error> {
        self.table(&FLOWS)
    }

    /// Every handshake in progress.
    pub fn embryos(&self) -> Result<BTreeMap<FlowKeyOrd, Flow>, Error> {
        self.table(&EMBRYOS)
    }

    /// Every handshake in progress that the trusted side opened.
    pub fn embryos_out(&self) -> Result<BTreeMap<FlowKeyOrd, Flow>, Error> {
        self.table(&EMBRYOS_OUT)
    }

    /// Every UDP flow.
    pub fn udp_flows(&self) -> Result<BTreeMap<FlowKeyOrd, Flow>, Error> {
        self.table(&UDP_FLOWS)
    }

    /// Remove the entry of `key` (either family) from a kind of table.
    fn remove_flow(&mut self, table: &Table, key: &FlowKey) -> Result<(), Error> {
        let (v6, v4) = match table.v6 {
            map::FLOWS => (&mut self.flows, &mut self.flows4),
            map::EMBRYOS => (&mut self.embryos, &mut self.embryos4),
            map::EMBRYOS_OUT => (&mut self.embryos_out, &mut self.embryos_out4),
            _ => (&mut self.udp_flows, &mut self.udp_flows4),
        };
        match FlowKey4::of(key) {
            Some(k4) => remove(v4, table.v4, &k4),
            None => remove(v6, table.v6, key),
        }
    }

    /// What happened in the state tables now, from a census taken by this call
    /// ([`Census::take`]: a pass over the tables).
    pub fn flow_events(&self) -> Result<FlowEvents, Error> {
        Ok(Census::take(self, None)?.flow_events(&self.events()?))
    }

    /// Established flows per source prefix, as the kernel counts them.
    pub fn sources(&self) -> Result<BTreeMap<([u8; 16], u8), u64>, Error> {
        let mut out = BTreeMap::new();
        self.each::<SourceKey, u64>(map::SOURCES, |k, n| {
            out.insert((k.addr, k.family), *n);
        })?;
        Ok(out)
    }

    /// Put the per-source counts right: remove the flows that expired unseen, count
    /// the live ones per source prefix as the kernel does, and write the counts
    /// (dropping sources that hold nothing). The kernel counts flows up and down as
    /// it sees them; LRU evictions, expiries nobody looked at and lost races are what
    /// this corrects. Returns (flows removed as expired, sources counted).
    pub fn recount_sources(&mut self, now_ns: u64) -> Result<(usize, usize), Error> {
        let settings = self.settings()?;
        let flows = self.flows()?;
        let mut counts: BTreeMap<SourceKey, u64> = BTreeMap::new();
        let mut stale = Vec::new();
        for (k, f) in &flows {
            if !flow_is_live(f, &settings, false, now_ns) {
                stale.push(k.0);
                continue;
            }
            *counts.entry(source_of(&k.0, f, &settings)).or_default() += 1;
        }
        for k in &stale {
            self.remove_flow(&FLOWS, k)?;
        }
        let mut keys = Vec::new();
        self.each::<SourceKey, u64>(map::SOURCES, |k, _| keys.push(*k))?;
        for k in keys.iter().filter(|k| !counts.contains_key(k)) {
            remove(&mut self.sources, map::SOURCES, k)?;
        }
        for (k, n) in &counts {
            self.sources.insert(*k, *n, 0).map_err(map_err(map::SOURCES))?;
        }
        Ok((stale.len(), counts.len()))
    }

    /// Write flows into the flow table, as if their handshakes had completed here:
    /// how a benchmark fills the table to size. Existing entries with the same keys
    /// are replaced.
    pub fn insert_flows(&mut self, flows: impl IntoIterator<Item = (FlowKey, Flow)>) -> Result<(), Error> {
        for (key, flow) in flows {
            match FlowKey4::of(&key) {
                Some(k4) => self.flows4.insert(k4, flow, 0).map_err(map_err(map::FLOWS4))?,
                None => self.flows.insert(key, flow, 0).map_err(map_err(map::FLOWS))?,
            }
        }
        Ok(())
    }

    /// Empty the state tables.
    pub fn clear_state(&mut self) -> Result<(), Error> {
        for table in &STATE_TABLES {
            let mut keys = Vec::new();
            self.each_flow(table, |k, _| keys.push(*k))?;
            for k in &keys {
                self.remove_flow(table, k)?;
            }
        }
        Ok(())
    }
}

/// A kind of state table: its IPv6 and IPv4 maps, the protocol of its flows, and the
/// events that count its entries in and out (both families' maps count under the
/// same events).
pub struct Table {
    pub v6: &'static str,
    pub v4: &'static str,
    pub proto: u8,
    pub entered: &'static [u32],
    pub removed: &'static [u32],
}

impl Table {
    /// Whether its entries are UDP flows.
    pub fn udp(&self) -> bool {
        self.proto == ipproto::UDP
    }
}

pub(super) const FLOWS: Table = Table {
    v6: map::FLOWS,
    v4: map::FLOWS4,
    proto: ipproto::TCP,
    entered: &[e::FLOW_CREATED, e::FLOW_PICKED_UP],
    removed: &[e::FLOW_EXPIRED, e::FLOW_CLOSED],
};
pub(super) const EMBRYOS: Table = Table {
    v6: map::EMBRYOS,
    v4: map::EMBRYOS4,
    proto: ipproto::TCP,
    entered: &[e::EMBRYO_CREATED],
    removed: &[e::EMBRYO_EXPIRED, e::EMBRYO_CLOSED],
};
pub(super) const EMBRYOS_OUT: Table = Table {
    v6: map::EMBRYOS_OUT,
    v4: map::EMBRYOS_OUT4,
    proto: ipproto::TCP,
    entered: &[e::EMBRYO_OUT_CREATED],
    removed: &[e::EMBRYO_OUT_EXPIRED, e::EMBRYO_OUT_CLOSED],
};
pub(super) const UDP_FLOWS: Table =
    Table { v6: map::UDP_FLOWS, v4: map::UDP_FLOWS4, proto: ipproto::UDP, entered: &[e::UDP_CREATED, e::UDP_PICKED_UP], removed: &[e::UDP_EXPIRED] };
/// Every kind, in census order (the fields of `census::Census`).
pub const STATE_TABLES: [Table; 4] = [FLOWS, EMBRYOS, EMBRYOS_OUT, UDP_FLOWS];

/// The source prefix of a flow, as the kernel program forms it (`state.rs`): the
/// side that is not the Edge's, masked to the settings' source length.
fn source_of(key: &FlowKey, flow: &Flow, settings: &Settings) -> SourceKey {
    let outside_opened = flow.reply_roles & edge_filter_common::role::bit(edge_filter_common::role::EDGE) != 0;
    let addr = if outside_opened { &key.src } else { &key.dst };
    let mut s = SourceKey { addr: [0; 16], family: key.family, _pad: [0; 7] };
    if key.family == edge_filter_common::family::V4 {
        let a = u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]]) & hint::mask32(u32::from(settings.source_len4));
        s.addr[..4].copy_from_slice(&a.to_be_bytes());
    } else {
        s.addr = hint::mask6(addr, u32::from(settings.source_len6));
    }
    s
}

/// A [`FlowKey`] ordered by its bytes, for stable listings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowKeyOrd(pub FlowKey);

impl FlowKeyOrd {
    fn tuple(&self) -> ([u8; 16], [u8; 16], u16, u16, u8, u8) {
        let k = &self.0;
        (k.src, k.dst, u16::from_be(k.sport_be), u16::from_be(k.dport_be), k.family, k.proto)
    }
}

impl PartialOrd for FlowKeyOrd {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for FlowKeyOrd {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.tuple().cmp(&other.tuple())
    }
}
