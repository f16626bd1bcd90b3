//! The object's maps as one struct of typed maps, converted once.
//!
//! Contract:
//! - A [`Maps`] exists only when every map the object declares is there with the type
//!   this version reads it as: it is checked when the object is loaded, when pinned
//!   maps are opened ([`Maps::open_pinned`]) and when the maps are opened again by id
//!   ([`Maps::reopen`]), never at the first use. A missing map is
//!   [`Error::MissingMap`] (or [`Error::Pinned`] naming its pin), a map of another
//!   type [`Error::Map`] naming it.
//! - The methods that read and write the maps live beside what they are about:
//!   `policy.rs` (settings and the rule table), `ifaces.rs`, `sets.rs`, `counters.rs`
//!   and `state.rs` (the flow tables).

use std::path::Path;

use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap, IterableMap as _, Map, MapData, MapError, PerCpuArray},
};
use edge_filter_common::{
    Counter, Flow, FlowKey, Iface, LogBudget, PrefixLens, Rule, Ruleset, SetBits, SetKey4, SetKey6, SetName, SetRows, Settings, SourceKey, map,
};

use super::{Error, batch, map_err};

/// The maps of the object, by what they hold (`edge-filter-common`'s `map` names).
pub struct Maps {
    pub(super) ifaces: Array<MapData, Iface>,
    pub(super) edge4: HashMap<MapData, SetKey4, SetBits>,
    pub(super) edge6: HashMap<MapData, SetKey6, SetBits>,
    pub(super) set_names: Array<MapData, SetName>,
    pub(super) edge_lens: Array<MapData, PrefixLens>,
    pub(super) edge_lens_at: Array<MapData, u32>,
    pub(super) edge_hints: Array<MapData, u64>,
    pub(super) settings: Array<MapData, Settings>,
    pub(super) rules: Array<MapData, Rule>,
    pub(super) port_rows: Array<MapData, u64>,
    pub(super) set_rows: Array<MapData, SetRows>,
    pub(super) ruleset: Array<MapData, Ruleset>,
    /// The state tables (LRU hashes).
    pub(super) flows: HashMap<MapData, FlowKey, Flow>,
    pub(super) embryos: HashMap<MapData, FlowKey, Flow>,
    pub(super) embryos_out: HashMap<MapData, FlowKey, Flow>,
    pub(super) udp_flows: HashMap<MapData, FlowKey, Flow>,
    pub(super) sources: HashMap<MapData, SourceKey, u64>,
    pub(super) counters: PerCpuArray<MapData, Counter>,
    pub(super) rule_hits: PerCpuArray<MapData, Counter>,
    pub(super) events: PerCpuArray<MapData, u64>,
    pub(super) log_budget: PerCpuArray<MapData, LogBudget>,
}

/// `map` as the typed map `T`, or the error that names it.
fn typed<T: TryFrom<Map, Error = MapError>>(name: &'static str, map: Map) -> Result<T, Error> {
    T::try_from(map).map_err(map_err(name))
}

impl Maps {
    /// Every map, each from `get` by name, converted to its type.
    fn from_named(mut get: impl FnMut(&'static str) -> Result<Map, Error>) -> Result<Self, Error> {
        let mut one = |name: &'static str| get(name).map(|m| (name, m));
        macro_rules! field {
            ($name:expr) => {{
                let (name, m) = one($name)?;
                typed(name, m)?
            }};
        }
        Ok(Self {
            ifaces: field!(map::IFACES),
            edge4: field!(map::EDGE4),
            edge6: field!(map::EDGE6),
            set_names: field!(map::SET_NAMES),
            edge_lens: field!(map::EDGE_LENS),
            edge_lens_at: field!(map::EDGE_LENS_AT),
            edge_hints: field!(map::EDGE_HINTS),
            settings: field!(map::SETTINGS),
            rules: field!(map::RULES),
            port_rows: field!(map::PORT_ROWS),
            set_rows: field!(map::SET_ROWS),
            ruleset: field!(map::RULESET),
            flows: field!(map::FLOWS),
            embryos: field!(map::EMBRYOS),
            embryos_out: field!(map::EMBRYOS_OUT),
            udp_flows: field!(map::UDP_FLOWS),
            sources: field!(map::SOURCES),
            counters: field!(map::COUNTERS),
            rule_hits: field!(map::RULE_HITS),
            events: field!(map::EVENTS),
            log_budget: field!(map::LOG_BUDGET),
        })
    }

    /// Take the maps out of a loaded object.
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, Error> {
        Self::from_named(|name| ebpf.take_map(name).ok_or(Error::MissingMap { name }))
    }

    /// A second handle on the same maps (by id).
    pub fn reopen(&self) -> Result<Self, Error> {
        Self::from_named(|name| {
            let data = self.data(name).ok_or(Error::MissingMap { name })?;
            let id = data.info().map_err(map_err(name))?.id();
            let copy = MapData::from_id(id).map_err(map_err(name))?;
            Map::from_map_data(copy).map_err(map_err(name))
        })
    }

    /// Open the maps a filter pinned under `dir`.
    pub fn open_pinned(dir: &Path) -> Result<Self, Error> {
        Self::from_named(|name| {
            let path = dir.join(name);
            let data = MapData::from_pin(&path).map_err(|source| Error::Pinned { path: path.clone(), source })?;
            Map::from_map_data(data).map_err(|source| Error::Pinned { path, source })
        })
    }

    /// The map named `name`, whatever its type.
    pub(crate) fn data(&self, name: &str) -> Option<&MapData> {
        Some(match name {
            map::IFACES => self.ifaces.map(),
            map::EDGE4 => self.edge4.map(),
            map::EDGE6 => self.edge6.map(),
            map::SET_NAMES => self.set_names.map(),
            map::EDGE_LENS => self.edge_lens.map(),
            map::EDGE_LENS_AT => self.edge_lens_at.map(),
            map::EDGE_HINTS => self.edge_hints.map(),
            map::SETTINGS => self.settings.map(),
            map::RULES => self.rules.map(),
            map::PORT_ROWS => self.port_rows.map(),
            map::SET_ROWS => self.set_rows.map(),
            map::RULESET => self.ruleset.map(),
            map::FLOWS => self.flows.map(),
            map::EMBRYOS => self.embryos.map(),
            map::EMBRYOS_OUT => self.embryos_out.map(),
            map::UDP_FLOWS => self.udp_flows.map(),
            map::SOURCES => self.sources.map(),
            map::COUNTERS => self.counters.map(),
            map::RULE_HITS => self.rule_hits.map(),
            map::EVENTS => self.events.map(),
            map::LOG_BUDGET => self.log_budget.map(),
            _ => return None,
        })
    }

    /// The descriptor of map `name`, for tools that read it by themselves (the
    /// benchmark's instruction counter reads through to the kernel's maps).
    pub fn raw_fd(&self, name: &str) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd as _;
        self.data(name).map(|m| m.fd().as_fd())
    }

    /// Every entry of map `name`, read in batches ([`batch::for_each`]).
    pub(crate) fn each<K: Pod, V: Pod>(&self, name: &'static str, mut visit: impl FnMut(&K, &V)) -> Result<(), Error> {
        let data = self.data(name).ok_or(Error::MissingMap { name })?;
        batch::for_each::<K, V>(data, false, |k, v| visit(k, &v[0])).map_err(|source| Error::Read { name, source })
    }

    /// Every value of array `name`, in index order, read in batches.
    pub(super) fn array_values<V: Pod>(&self, name: &'static str) -> Result<Vec<V>, Error> {
        let mut out = Vec::new();
        self.each::<u32, V>(name, |_, v| out.push(*v))?;
        Ok(out)
    }

    /// Every entry of per-CPU array `name`, in index order, each summed over the
    /// CPUs by `add`, read in batches.
    pub(super) fn per_cpu_sums<V: Pod + Default>(&self, name: &'static str, add: impl Fn(V, &V) -> V) -> Result<Vec<V>, Error> {
        let data = self.data(name).ok_or(Error::MissingMap { name })?;
        let mut out = Vec::new();
        batch::for_each::<u32, V>(data, true, |_, per_cpu| out.push(per_cpu.iter().fold(V::default(), &add)))
            .map_err(|source| Error::Read { name, source })?;
        Ok(out)
    }
}

/// Remove `key` from a hash map; a key already gone is not an error (the kernel may
/// have removed it meanwhile).
pub(super) fn remove<K: Pod, V: Pod>(table: &mut HashMap<MapData, K, V>, name: &'static str, key: &K) -> Result<(), Error> {
    match table.remove(key) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(map_err(name)(e)),
    }
}
