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
//!   and `state.rs` (the flow tables). The first three share `CONFIG`, one value that
//!   is read and written here, whole.

use std::path::Path;

use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap, IterableMap as _, Map, MapData, MapError, PerCpuArray},
};
use edge_filter_common::{
    Config, Counter, Exact4, Exact6, Flow, FlowKey, FlowKey4, LogBudget, Rule, RuleTables, SetBits, SetKey4, SetKey6, SetName, SourceKey, map,
};

use super::{Error, batch, map_err};

/// Declares [`Maps`] from one list of (field, map name, type): the struct, its
/// conversion from maps by name, and the way back from a name to its map, so the three
/// cannot drift apart.
macro_rules! maps {
    ($($(#[$doc:meta])* $field:ident: $name:path => $ty:ty,)+) => {
        /// The maps of the object, by what they hold (`edge-filter-common`'s `map` names).
        pub struct Maps {
            $($(#[$doc])* pub(super) $field: $ty,)+
        }

        impl Maps {
            /// Every map, each from `get` by name, converted to its type.
            fn from_named(mut get: impl FnMut(&'static str) -> Result<Map, Error>) -> Result<Self, Error> {
                Ok(Self { $($field: typed($name, get($name)?)?,)+ })
            }

            /// The map named `name`, whatever its type.
            pub(crate) fn data(&self, name: &str) -> Option<&MapData> {
                $(if name == $name {
                    return Some(self.$field.map());
                })+
                None
            }
        }
    };
}

maps! {
    config: map::CONFIG => Array<MapData, Config>,
    edge4: map::EDGE4 => HashMap<MapData, SetKey4, SetBits>,
    edge6: map::EDGE6 => HashMap<MapData, SetKey6, SetBits>,
    exact4: map::EXACT4 => Array<MapData, Exact4>,
    exact6: map::EXACT6 => Array<MapData, Exact6>,
    set_names: map::SET_NAMES => Array<MapData, SetName>,
    edge_hints: map::EDGE_HINTS => Array<MapData, u64>,
    rules: map::RULES => Array<MapData, Rule>,
    rule_tables: map::RULE_TABLES => Array<MapData, RuleTables>,
    /// The state tables (LRU hashes), IPv6 and IPv4.
    flows: map::FLOWS => HashMap<MapData, FlowKey, Flow>,
    embryos: map::EMBRYOS => HashMap<MapData, FlowKey, Flow>,
    embryos_out: map::EMBRYOS_OUT => HashMap<MapData, FlowKey, Flow>,
    udp_flows: map::UDP_FLOWS => HashMap<MapData, FlowKey, Flow>,
    flows4: map::FLOWS4 => HashMap<MapData, FlowKey4, Flow>,
    embryos4: map::EMBRYOS4 => HashMap<MapData, FlowKey4, Flow>,
    embryos_out4: map::EMBRYOS_OUT4 => HashMap<MapData, FlowKey4, Flow>,
    udp_flows4: map::UDP_FLOWS4 => HashMap<MapData, FlowKey4, Flow>,
    sources: map::SOURCES => HashMap<MapData, SourceKey, u64>,
    counters: map::COUNTERS => PerCpuArray<MapData, Counter>,
    rule_hits: map::RULE_HITS => PerCpuArray<MapData, Counter>,
    events: map::EVENTS => PerCpuArray<MapData, u64>,
    log_budget: map::LOG_BUDGET => PerCpuArray<MapData, LogBudget>,
}

/// `map` as the typed map `T`, or the error that names it.
fn typed<T: TryFrom<Map, Error = MapError>>(name: &'static str, map: Map) -> Result<T, Error> {
    T::try_from(map).map_err(map_err(name))
}

impl Maps {
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

    /// The descriptor of map `name`, for tools that read it by themselves (the
    /// benchmark's instruction counter reads through to the kernel's maps).
    pub fn raw_fd(&self, name: &str) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd as _;
        self.data(name).map(|m| m.fd().as_fd())
    }

    /// The configuration value (settings, NICs, the sets' prefix lengths).
    pub(crate) fn config(&self) -> Result<Config, Error> {
        self.config.get(&0, 0).map_err(map_err(map::CONFIG))
    }

    /// Write the configuration value whole. Callers read it first and change only what
    /// they own (the pin directory's lock keeps every other writer out), so a packet
    /// reading it meanwhile sees every other field as it was (see `Config`).
    pub(super) fn write_config(&mut self, config: &Config) -> Result<(), Error> {
        self.config.set(0, config, 0).map_err(map_err(map::CONFIG))
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
