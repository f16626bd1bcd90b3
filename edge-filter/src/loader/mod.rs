//! The loader: the embedded kernel object, loaded, and its maps behind typed methods.
//!
//! [`Maps`] is the typed view of the maps, whether they come from a fresh load or
//! from their pins (commands that change a running filter without the daemon);
//! [`Filter`] is a loaded program with its [`Maps`].
//!
//! Contract:
//! - [`Filter::load`] loads the XDP program (verifier included) and writes the default
//!   policy, so a loaded filter enforces the vendor table as soon as it is attached and
//!   has addresses.
//! - Every map write goes through a domain type that is already valid ([`Policy`],
//!   [`AddressSets`], [`Role`]); address changes are computed in full and checked
//!   before the first map write, so a refused change leaves the maps as they were.
//! - Whole maps are read in batches ([`batch`]), never an entry per system call.
//! - Each NIC gets its own counter slot; a slot is zeroed when it is handed out, so a
//!   NIC never inherits the counts of one that left.

use std::{
    collections::BTreeMap,
    ops::{Deref, DerefMut},
    path::{Path, PathBuf},
};

mod batch;

use aya::{
    Ebpf, Pod, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp},
    util::{KernelVersion, nr_cpus},
};
use edge_filter_common::{
    COUNTER_ENTRIES, Counter, DEFAULT_MAX_EMBRYOS, DEFAULT_MAX_EMBRYOS_OUT, DEFAULT_MAX_FLOWS, DEFAULT_MAX_UDP_FLOWS, Flow, FlowKey, Iface,
    MAX_IFACES, MAX_IFINDEX, MAX_PREFIX_LENS, MAX_RULES, MAX_SETS, NAME_LEN, PrefixLens, Rule, Ruleset, SMALL_SET, SetBits, SetKey4,
    SetKey6, SetName, SetRows, Settings, Small4, Small6, SourceKey, TC_PROGRAM, XDP_PROGRAM, XDP_PROGRAM_LINEAR, counter_index, hint, map, verdict,
};

use crate::{
    census::{Census, FlowEvents, flow_is_live},
    addr::{AddrError, AddressSets, Prefix, SetId},
    counters::Counters,
    policy::{Policy, Role},
    rules::{self, RuleTable},
};

/// The kernel object, built by `build.rs`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/edge-filter"));

/// The traffic generator for tests and benchmarks (`edge-filter-ebpf/src/gen.rs`):
/// an XDP program named `traffic_gen` to run in live-frames mode.
pub static TRAFFIC_GEN: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/traffic-gen"));

/// The benchmark floor (`edge-filter-ebpf/src/floor.rs`): XDP programs `floor_pass`
/// and `floor_drop`, which return their action without reading the frame.
pub static FLOOR: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/floor"));

/// What the loader reports when the kernel or the maps refuse.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the eBPF object")]
    Object(#[source] aya::EbpfError),
    #[error("program `{name}`")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("map `{name}`")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("map `{name}` is missing from the object")]
    MissingMap { name: &'static str },
    #[error("map `{name}` holds a value this version does not understand: {what}")]
    Corrupt { name: &'static str, what: String },
    #[error(transparent)]
    Addr(#[from] AddrError),
    #[error("all {max} interface slots are in use", max = MAX_IFACES - 1)]
    NoFreeSlot,
    #[error("ifindex {ifindex} is not below {max}, the highest the program serves", max = MAX_IFINDEX)]
    IfindexTooHigh { ifindex: u32 },
    #[error("the address sets hold prefixes of more than {MAX_PREFIX_LENS} different lengths in one family")]
    TooManyLengths,
    #[error("pinned map {} is not what this edge-filter uses ({what}); `edge-filter detach` removes the old pins (counters and flows start again)", path.display())]
    PinnedIncompatible { path: PathBuf, what: String },
    #[error("the state tables' sizes must be at least 1")]
    ZeroFlows,
    #[error("reading the number of CPUs")]
    Cpus(#[source] std::io::Error),
    #[error("pin directory {}", dir.display())]
    PinDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading map `{name}`")]
    Read {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("pinned map {}", path.display())]
    Pinned {
        path: PathBuf,
        #[source]
        source: MapError,
    },
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> Error {
    move |source| Error::Map { name, source }
}

/// The two builds of the XDP program in the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// `xdp.frags`: jumbo frames, counted by their whole length. Kernel 5.18+.
    MultiBuffer,
    /// One buffer per frame, for older kernels.
    Linear,
}

impl Variant {
    /// The variant for the running kernel: multi-buffer from 5.18, where the kernel
    /// learnt `BPF_F_XDP_HAS_FRAGS` and `bpf_xdp_get_buff_len`.
    pub fn for_kernel() -> Self {
        match KernelVersion::current() {
            Ok(v) if v < KernelVersion::new(5, 18, 0) => Variant::Linear,
            _ => Variant::MultiBuffer,
        }
    }

    /// The program's name in the object.
    pub fn program_name(self) -> &'static str {
        match self {
            Variant::MultiBuffer => XDP_PROGRAM,
            Variant::Linear => XDP_PROGRAM_LINEAR,
        }
    }
}

/// Load-time parameters.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Flow table entries (completed handshakes).
    pub max_flows: u32,
    /// Embryonic table entries (handshakes in progress).
    pub max_embryos: u32,
    /// Entries of the table of handshakes the trusted side opened.
    pub max_embryos_out: u32,
    /// UDP flow table entries.
    pub max_udp_flows: u32,
    /// The program build; `None` picks the one for the running kernel.
    pub variant: Option<Variant>,
    /// Where the maps are pinned: maps already pinned there are reused (their counters,
    /// flows and sets survive), the others are created and pinned. `None`: unpinned.
    pub map_pin_dir: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_flows: DEFAULT_MAX_FLOWS,
            max_embryos: DEFAULT_MAX_EMBRYOS,
            max_embryos_out: DEFAULT_MAX_EMBRYOS_OUT,
            max_udp_flows: DEFAULT_MAX_UDP_FLOWS,
            variant: None,
            map_pin_dir: None,
        }
    }
}

/// A NIC the program serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfaceEntry {
    pub ifindex: u32,
    pub role: Role,
    /// Counter slot.
    pub slot: u32,
}

/// The loaded kernel object.
pub struct Filter {
    ebpf: Ebpf,
    maps: Maps,
    /// The program variant this kernel runs.
    program: &'static str,
}

impl Deref for Filter {
    type Target = Maps;

    fn deref(&self) -> &Maps {
        &self.maps
    }
}

impl DerefMut for Filter {
    fn deref_mut(&mut self) -> &mut Maps {
        &mut self.maps
    }
}

/// The maps of the object, by name.
pub struct Maps {
    maps: BTreeMap<&'static str, Map>,
}


impl Filter {
    /// Load and verify the program, size the flow table, write the default policy.
    pub fn load(opts: &LoadOptions) -> Result<Self, Error> {
        if opts.max_flows == 0 || opts.max_embryos == 0 || opts.max_embryos_out == 0 || opts.max_udp_flows == 0 {
            return Err(Error::ZeroFlows);
        }
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(map::FLOWS, opts.max_flows)
            .map_max_entries(map::EMBRYOS, opts.max_embryos)
            .map_max_entries(map::EMBRYOS_OUT, opts.max_embryos_out)
            .map_max_entries(map::UDP_FLOWS, opts.max_udp_flows)
            .map_max_entries(map::SOURCES, opts.max_flows);
        let pins: Vec<(&'static str, PathBuf)> = match &opts.map_pin_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| Error::PinDir { dir: dir.clone(), source })?;
                map::ALL.iter().map(|name| (*name, dir.join(name))).collect()
            }
            None => Vec::new(),
        };
        let fresh = pins.iter().all(|(_, path)| !path.exists());
        if !fresh {
            check_pins(&pins)?;
        }
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).map_err(Error::Object)?;
        let maps = Maps::take(&mut ebpf)?;
        let variant = opts.variant.unwrap_or_else(Variant::for_kernel);
        let mut filter = Self { ebpf, maps, program: variant.program_name() };
        let name = filter.program;
        filter.program_mut()?.load().map_err(|source| Error::Program { name, source })?;
        if fresh {
            filter.set_policy(&Policy::default())?;
            filter.set_address_sets(&AddressSets::default())?;
        }
        Ok(filter)
    }

    /// The host-mode TC egress program, loaded on first use.
    pub fn egress_program_mut(&mut self) -> Result<&mut SchedClassifier, Error> {
        let err = |source| Error::Program { name: TC_PROGRAM, source };
        let prog: &mut SchedClassifier =
            self.ebpf.program_mut(TC_PROGRAM).ok_or(err(ProgramError::NotLoaded))?.try_into().map_err(err)?;
        if prog.fd().is_err() {
            prog.load().map_err(err)?;
        }
        Ok(prog)
    }

    /// The loaded object, for what needs it whole (the drop log reader).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The name of the program variant in use.
    pub fn program_name(&self) -> &'static str {
        self.program
    }

    /// The XDP program, loaded and ready to attach.
    pub fn program(&self) -> Result<&Xdp, Error> {
        let name = self.program;
        let err = |source| Error::Program { name, source };
        let prog = self.ebpf.program(name).ok_or(err(ProgramError::NotLoaded))?;
        prog.try_into().map_err(err)
    }

    pub fn program_mut(&mut self) -> Result<&mut Xdp, Error> {
        let name = self.program;
        let err = |source| Error::Program { name, source };
        let prog = self.ebpf.program_mut(name).ok_or(err(ProgramError::NotLoaded))?;
        prog.try_into().map_err(err)
    }

    /// Run the program once on `frame` as if it arrived on `ifindex`
    /// (BPF_PROG_TEST_RUN with an `xdp_md` context, kernel 5.13+). Returns the XDP
    /// action. `ifindex` must name a device in the caller's network namespace.
    pub fn test_run(&self, frame: &[u8], ifindex: u32) -> Result<u32, Error> {
        let ctx = xdp_md(frame.len(), ifindex);
        self.run_test(TestRunOptions { data_in: Some(frame), ctx_in: Some(&ctx), ..TestRunOptions::new() })
    }

    /// Run the program once on `frame` without a context: older kernels (before
    /// 5.13) take none and present the frame as arriving on the loopback device.
    pub fn test_run_on_loopback(&self, frame: &[u8]) -> Result<u32, Error> {
        self.run_test(TestRunOptions { data_in: Some(frame), ..TestRunOptions::new() })
    }

    fn run_test(&self, opts: TestRunOptions<'_>) -> Result<u32, Error> {
        let result = self.program()?.test_run(opts).map_err(|source| Error::Program { name: self.program, source })?;
        Ok(result.return_value)
    }

    /// Whether BPF_PROG_TEST_RUN takes an `xdp_md` context here (kernel 5.13+).
    pub fn test_run_takes_context() -> bool {
        !matches!(KernelVersion::current(), Ok(v) if v < KernelVersion::new(5, 13, 0))
    }
}

impl Maps {
    /// Take the maps out of a loaded object.
    fn take(ebpf: &mut Ebpf) -> Result<Self, Error> {
        let mut maps = BTreeMap::new();
        for name in map::ALL {
            maps.insert(name, ebpf.take_map(name).ok_or(Error::MissingMap { name })?);
        }
        Ok(Self { maps })
    }

    /// A second handle on the same maps (by id).
    pub fn reopen(&self) -> Result<Self, Error> {
        let mut maps = BTreeMap::new();
        for (name, map) in &self.maps {
            let data = match map {
                Map::Array(m) | Map::HashMap(m) | Map::LruHashMap(m) | Map::PerCpuArray(m) => m,
                _ => return Err(Error::Corrupt { name, what: "a map type edge-filter does not use".into() }),
            };
            let id = data.info().map_err(map_err(name))?.id();
            let copy = MapData::from_id(id).map_err(map_err(name))?;
            maps.insert(*name, Map::from_map_data(copy).map_err(map_err(name))?);
        }
        Ok(Self { maps })
    }

    /// Open the maps a filter pinned under `dir`.
    pub fn open_pinned(dir: &Path) -> Result<Self, Error> {
        let mut maps = BTreeMap::new();
        for name in map::ALL {
            let path = dir.join(name);
            let data = MapData::from_pin(&path).map_err(|source| Error::Pinned { path: path.clone(), source })?;
            let map = Map::from_map_data(data).map_err(|source| Error::Pinned { path, source })?;
            maps.insert(name, map);
        }
        Ok(Self { maps })
    }

    fn map(&self, name: &'static str) -> Result<&Map, Error> {
        self.maps.get(name).ok_or(Error::MissingMap { name })
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, Error> {
        self.maps.get_mut(name).ok_or(Error::MissingMap { name })
    }

    /// The descriptor of map `name`, for tools that read it by themselves (the
    /// benchmark's instruction counter reads through to the kernel's maps).
    pub fn raw_fd(&self, name: &str) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd as _;
        batch::data(self.maps.get(name)?).map(|m| m.fd().as_fd())
    }

    fn map_data(&self, name: &'static str) -> Result<&MapData, Error> {
        batch::data(self.map(name)?).ok_or_else(|| Error::Corrupt { name, what: "not an array or a hash map".into() })
    }

    /// Every entry of map `name`, read in batches ([`batch::for_each`]).
    pub(crate) fn each<K: Pod, V: Pod>(&self, name: &'static str, mut visit: impl FnMut(&K, &V)) -> Result<(), Error> {
        batch::for_each::<K, V>(self.map_data(name)?, false, |k, v| visit(k, &v[0]))
            .map_err(|source| Error::Read { name, source })
    }

    /// Every value of array `name`, in index order, read in batches.
    fn array_values<V: Pod>(&self, name: &'static str) -> Result<Vec<V>, Error> {
        let mut out = Vec::new();
        self.each::<u32, V>(name, |_, v| out.push(*v))?;
        Ok(out)
    }

    /// Every entry of per-CPU array `name`, in index order, each summed over the
    /// CPUs by `add`, read in batches.
    fn per_cpu_sums<V: Pod + Default>(&self, name: &'static str, add: impl Fn(V, &V) -> V) -> Result<Vec<V>, Error> {
        let mut out = Vec::new();
        batch::for_each::<u32, V>(self.map_data(name)?, true, |_, per_cpu| {
            out.push(per_cpu.iter().fold(V::default(), &add));
        })
        .map_err(|source| Error::Read { name, source })?;
        Ok(out)
    }

    pub(crate) fn settings(&self) -> Result<Settings, Error> {
        let settings: Array<&MapData, Settings> =
            Array::try_from(self.map(map::SETTINGS)?).map_err(map_err(map::SETTINGS))?;
        settings.get(&0, 0).map_err(map_err(map::SETTINGS))
    }

    /// The row slots of one generation of the rule table.
    fn rule_slots(&self, generation: u32) -> Result<Vec<Rule>, Error> {
        let mut rules = self.array_values::<Rule>(map::RULES)?;
        let at = (generation * MAX_RULES) as usize;
        if rules.len() < at + MAX_RULES as usize {
            return Err(Error::Corrupt { name: map::RULES, what: format!("{} entries", rules.len()) });
        }
        Ok(rules.drain(at..at + MAX_RULES as usize).collect())
    }

    /// The id of each row slot of the current table (`None`: unused).
    pub fn rule_names(&self) -> Result<Vec<Option<String>>, Error> {
        let generation = self.settings()?.rules_at & 1;
        Ok(self.rule_slots(generation)?.iter().map(rule_id).collect())
    }

    /// Replace the policy: the rule table is written whole into the generation no
    /// packet reads, then the settings (defaults, timeouts) are written with that
    /// generation made current, in one map write. An id keeps its row slot, and so its
    /// hit counter; a slot handed to a new id starts from zero.
    pub fn set_policy(&mut self, policy: &Policy) -> Result<(), Error> {
        let current = self.settings()?.rules_at & 1;
        let next = current ^ 1;
        let names: Vec<Option<String>> = self.rule_slots(current)?.iter().map(rule_id).collect();
        let (slots, fresh) = rules::place(&names, &policy.rules);
        let compiled = policy.rules.compile(&slots);
        // PORT_ROWS of `next` is non-zero only on the ports of the rows `next` held:
        // those and the new rows' ports are all that need writing.
        let old = self.rule_slots(next)?;
        let mut touched: [std::collections::BTreeSet<u16>; 2] = Default::default();
        for r in old.iter().filter(|r| r.id != [0; NAME_LEN]) {
            if let Some(p) = edge_filter_common::proto_index(r.proto) {
                touched[p as usize].extend(r.lo..=r.hi);
            }
        }
        for (p, ranges) in compiled.ports.iter().enumerate() {
            for (range, _) in ranges {
                touched[p].extend(range.lo()..=range.hi());
            }
        }
        {
            let name = map::PORT_ROWS;
            let mut ports: Array<&mut MapData, u64> = Array::try_from(self.map_mut(name)?).map_err(map_err(name))?;
            for (p, set) in touched.iter().enumerate() {
                for port in set {
                    let index = (next * 2 + p as u32) * 65_536 + u32::from(*port);
                    ports.set(index, compiled.port_mask(p, *port), 0).map_err(map_err(name))?;
                }
            }
        }
        {
            let name = map::SET_ROWS;
            let mut rows: Array<&mut MapData, SetRows> = Array::try_from(self.map_mut(name)?).map_err(map_err(name))?;
            for (i, r) in compiled.set_rows.iter().enumerate() {
                rows.set(next * 512 + i as u32, *r, 0).map_err(map_err(name))?;
            }
        }
        {
            let name = map::RULESET;
            let mut set: Array<&mut MapData, Ruleset> = Array::try_from(self.map_mut(name)?).map_err(map_err(name))?;
            set.set(next, compiled.ruleset, 0).map_err(map_err(name))?;
        }
        {
            let name = map::RULES;
            let mut rules: Array<&mut MapData, Rule> = Array::try_from(self.map_mut(name)?).map_err(map_err(name))?;
            for (i, r) in compiled.rules.iter().enumerate() {
                rules.set(next * MAX_RULES + i as u32, *r, 0).map_err(map_err(name))?;
            }
        }
        self.zero_rule_hits(&fresh)?;
        let mut settings: Array<&mut MapData, Settings> =
            Array::try_from(self.map_mut(map::SETTINGS)?).map_err(map_err(map::SETTINGS))?;
        settings.set(0, policy.to_settings(next), 0).map_err(map_err(map::SETTINGS))
    }

    fn zero_rule_hits(&mut self, slots: &[usize]) -> Result<(), Error> {
        let cpus = nr_cpus().map_err(|(_, e)| Error::Cpus(e))?;
        let name = map::RULE_HITS;
        let mut hits: PerCpuArray<&mut MapData, Counter> =
            PerCpuArray::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        for slot in slots {
            let zero = PerCpuValues::try_from(vec![Counter::default(); cpus]).map_err(Error::Cpus)?;
            hits.set(*slot as u32, zero, 0).map_err(map_err(name))?;
        }
        Ok(())
    }

    /// The policy the kernel holds, its rule table in the order it was written.
    pub fn policy(&self) -> Result<Policy, Error> {
        let s = self.settings()?;
        let corrupt = || Error::Corrupt { name: map::SETTINGS, what: format!("{s:?}") };
        let rows = RuleTable::from_kernel(&self.rule_slots(s.rules_at & 1)?)
            .ok_or_else(|| Error::Corrupt { name: map::RULES, what: "a row this version does not write".into() })?;
        let table = RuleTable::from_rows(rows.into_iter().map(|(_, r)| r).collect());
        Policy::from_settings(&s, table).ok_or_else(corrupt)
    }

    /// Whether the policy counts would-be drops and passes them (dry run): the
    /// settings alone, without reading the rule table.
    pub fn dry_run(&self) -> Result<bool, Error> {
        Ok(self.settings()?.flags & edge_filter_common::flags::DRY_RUN != 0)
    }

    /// The NICs with a role, by ifindex.
    pub fn ifaces(&self) -> Result<Vec<IfaceEntry>, Error> {
        let mut out = Vec::new();
        for (ifindex, iface) in self.array_values::<Iface>(map::IFACES)?.into_iter().enumerate() {
            if iface.role == 0 {
                continue;
            }
            let ifindex = ifindex as u32;
            let role = Role::from_kernel(iface.role).ok_or_else(|| Error::Corrupt {
                name: map::IFACES,
                what: format!("role {} of ifindex {ifindex}", iface.role),
            })?;
            out.push(IfaceEntry { ifindex, role, slot: iface.slot });
        }
        Ok(out)
    }

    /// Give the NIC a role; it keeps its counter slot if it had one. Returns the slot.
    pub fn set_iface(&mut self, ifindex: u32, role: Role) -> Result<u32, Error> {
        if ifindex >= MAX_IFINDEX {
            return Err(Error::IfindexTooHigh { ifindex });
        }
        let current = self.ifaces()?;
        let slot = match current.iter().find(|e| e.ifindex == ifindex) {
            Some(e) => e.slot,
            None => {
                let slot = (1..MAX_IFACES)
                    .find(|s| current.iter().all(|e| e.slot != *s))
                    .ok_or(Error::NoFreeSlot)?;
                self.zero_slot(slot)?;
                slot
            }
        };
        self.write_iface(ifindex, Iface { role: role.to_kernel(), slot })?;
        Ok(slot)
    }

    /// Take the role away: the NIC's packets pass as `pass/unattached`.
    pub fn remove_iface(&mut self, ifindex: u32) -> Result<(), Error> {
        if ifindex >= MAX_IFINDEX {
            return Ok(());
        }
        self.write_iface(ifindex, Iface::default())
    }

    fn write_iface(&mut self, ifindex: u32, iface: Iface) -> Result<(), Error> {
        let mut ifaces: Array<&mut MapData, Iface> =
            Array::try_from(self.map_mut(map::IFACES)?).map_err(map_err(map::IFACES))?;
        ifaces.set(ifindex, iface, 0).map_err(map_err(map::IFACES))
    }

    fn zero_slot(&mut self, slot: u32) -> Result<(), Error> {
        let cpus = nr_cpus().map_err(|(_, e)| Error::Cpus(e))?;
        let mut counters: PerCpuArray<&mut MapData, Counter> =
            PerCpuArray::try_from(self.map_mut(map::COUNTERS)?).map_err(map_err(map::COUNTERS))?;
        for v in 0..verdict::SLOTS {
            let zero = PerCpuValues::try_from(vec![Counter::default(); cpus]).map_err(Error::Cpus)?;
            counters.set(counter_index(slot, v), zero, 0).map_err(map_err(map::COUNTERS))?;
        }
        Ok(())
    }

    /// The address sets the kernel holds, with the names of its peer sets.
    pub fn address_sets(&self) -> Result<AddressSets, Error> {
        let mut sets = AddressSets::default();
        let names: Array<&MapData, SetName> =
            Array::try_from(self.map(map::SET_NAMES)?).map_err(map_err(map::SET_NAMES))?;
        for i in edge_filter_common::set::EDGE_COUNT..MAX_SETS {
            let n = names.get(&i, 0).map_err(map_err(map::SET_NAMES))?;
            let Some(name) = name_str(&n.name) else { break };
            let id = sets.add_peer(&name).map_err(|e| Error::Corrupt { name: map::SET_NAMES, what: e.to_string() })?;
            if u32::from(id.index()) != i {
                return Err(Error::Corrupt { name: map::SET_NAMES, what: format!("peer set `{name}` at index {i}") });
            }
        }
        let mut v4 = Vec::new();
        self.each::<SetKey4, SetBits>(map::EDGE4, |k, b| v4.push((std::net::Ipv4Addr::from(k.addr).into(), k.len, b.own)))?;
        for (addr, len, own) in v4 {
            insert_read(&mut sets, map::EDGE4, addr, len, own)?;
        }
        let mut v6 = Vec::new();
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
        {
            let name = map::SET_NAMES;
            let mut names: Array<&mut MapData, SetName> = Array::try_from(self.map_mut(name)?).map_err(map_err(name))?;
            for i in 0..MAX_SETS {
                let mut n = SetName::default();
                if let Some(id) = SetId::from_index(i).filter(|id| want.sets().any(|s| s == *id)) {
                    let text = want.name(id).as_bytes();
                    n.name[..text.len()].copy_from_slice(text);
                }
                names.set(i, n, 0).map_err(map_err(name))?;
            }
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
        let name = map::EDGE_HINTS;
        let mut array: Array<&mut MapData, u64> = Array::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        for (i, w) in bits.into_iter().enumerate() {
            array.set(i as u32, w, 0).map_err(map_err(name))?;
        }
        Ok(())
    }

    /// Publish a list of prefix lengths: written whole into the entry no packet
    /// reads, then made current with one word, so no packet sees half a list.
    fn write_lens(&mut self, lens: PrefixLens) -> Result<(), Error> {
        let at_name = map::EDGE_LENS_AT;
        let current = {
            let at: Array<&MapData, u32> = Array::try_from(self.map(at_name)?).map_err(map_err(at_name))?;
            at.get(&0, 0).map_err(map_err(at_name))? & 1
        };
        let name = map::EDGE_LENS;
        let mut array: Array<&mut MapData, PrefixLens> = Array::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        array.set(current ^ 1, lens, 0).map_err(map_err(name))?;
        let mut at: Array<&mut MapData, u32> = Array::try_from(self.map_mut(at_name)?).map_err(map_err(at_name))?;
        at.set(0, current ^ 1, 0).map_err(map_err(at_name))
    }

    fn write_prefix(&mut self, prefix: Prefix, bits: Option<SetBits>) -> Result<(), Error> {
        let len = u32::from(prefix.len());
        match prefix.addr() {
            std::net::IpAddr::V4(a) => {
                let mut table: HashMap<&mut MapData, SetKey4, SetBits> =
                    HashMap::try_from(self.map_mut(map::EDGE4)?).map_err(map_err(map::EDGE4))?;
                write_entry(&mut table, SetKey4 { len, addr: a.octets() }, bits).map_err(map_err(map::EDGE4))
            }
            std::net::IpAddr::V6(a) => {
                let mut table: HashMap<&mut MapData, SetKey6, SetBits> =
                    HashMap::try_from(self.map_mut(map::EDGE6)?).map_err(map_err(map::EDGE6))?;
                write_entry(&mut table, SetKey6 { len, addr: a.octets() }, bits).map_err(map_err(map::EDGE6))
            }
        }
    }

    /// Packet and byte counters per NIC slot and verdict, and hits per rule.
    pub fn counters(&self) -> Result<Counters, Error> {
        let add = |acc: Counter, c: &Counter| Counter { packets: acc.packets + c.packets, bytes: acc.bytes + c.bytes };
        let by_index = self.per_cpu_sums(map::COUNTERS, add)?;
        let rules = self.per_cpu_sums(map::RULE_HITS, add)?;
        if by_index.len() != COUNTER_ENTRIES as usize || rules.len() != MAX_RULES as usize {
            return Err(Error::Corrupt { name: map::COUNTERS, what: format!("{} counters, {} rule counters", by_index.len(), rules.len()) });
        }
        Ok(Counters::new(by_index, rules, self.rule_names()?))
    }

    /// Occurrences of each `event`, summed over CPUs.
    pub fn events(&self) -> Result<Vec<u64>, Error> {
        let mut events = self.per_cpu_sums(map::EVENTS, |acc: u64, n: &u64| acc + n)?;
        events.resize(edge_filter_common::event::COUNT as usize, 0);
        Ok(events)
    }

    fn table_size(&self, name: &'static str) -> Result<u32, Error> {
        let info = match self.map(name)? {
            Map::LruHashMap(m) => m.info(),
            _ => return Err(Error::Corrupt { name, what: "not an LRU hash".into() }),
        };
        Ok(info.map_err(map_err(name))?.max_entries())
    }

    /// The flow table's size.
    pub fn max_flows(&self) -> Result<u32, Error> {
        self.table_size(map::FLOWS)
    }

    /// The embryonic table's size.
    pub fn max_embryos(&self) -> Result<u32, Error> {
        self.table_size(map::EMBRYOS)
    }

    /// The size of the table of handshakes the trusted side opened.
    pub fn max_embryos_out(&self) -> Result<u32, Error> {
        self.table_size(map::EMBRYOS_OUT)
    }

    /// The UDP flow table's size.
    pub fn max_udp_flows(&self) -> Result<u32, Error> {
        self.table_size(map::UDP_FLOWS)
    }

    fn table(&self, name: &'static str) -> Result<BTreeMap<FlowKeyOrd, Flow>, Error> {
        let mut out = BTreeMap::new();
        self.each::<FlowKey, Flow>(name, |k, v| {
            out.insert(FlowKeyOrd(*k), *v);
        })?;
        Ok(out)
    }

    /// Packets and bytes of one NIC slot, by verdict (summed over CPUs): a cheaper read
    /// than [`Maps::counters`] when one NIC is watched.
    pub fn slot_counters(&self, slot: u32) -> Result<[Counter; verdict::SLOTS as usize], Error> {
        let counters: PerCpuArray<&MapData, Counter> =
            PerCpuArray::try_from(self.map(map::COUNTERS)?).map_err(map_err(map::COUNTERS))?;
        let mut out = [Counter::default(); verdict::SLOTS as usize];
        for (v, c) in out.iter_mut().enumerate() {
            *c = sum(&counters.get(&counter_index(slot, v as u32), 0).map_err(map_err(map::COUNTERS))?);
        }
        Ok(out)
    }

    /// Every flow whose handshake completed.
    pub fn flows(&self) -> Result<BTreeMap<FlowKeyOrd, Flow>, Error> {
        self.table(map::FLOWS)
    }

    /// Every handshake in progress.
    pub fn embryos(&self) -> Result<BTreeMap<FlowKeyOrd, Flow>, Error> {
        self.table(map::EMBRYOS)
    }

    /// Every handshake in progress that the trusted side opened.
    pub fn embryos_out(&self) -> Result<BTreeMap<FlowKeyOrd, Flow>, Error> {
        self.table(map::EMBRYOS_OUT)
    }

    /// Every UDP flow.
    pub fn udp_flows(&self) -> Result<BTreeMap<FlowKeyOrd, Flow>, Error> {
        self.table(map::UDP_FLOWS)
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
        {
            let name = map::FLOWS;
            let mut table: HashMap<&mut MapData, FlowKey, Flow> =
                HashMap::try_from(self.map_mut(name)?).map_err(map_err(name))?;
            for k in &stale {
                match table.remove(k) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(map_err(name)(e)),
                }
            }
        }
        let name = map::SOURCES;
        let mut keys = Vec::new();
        self.each::<SourceKey, u64>(name, |k, _| keys.push(*k))?;
        let mut table: HashMap<&mut MapData, SourceKey, u64> =
            HashMap::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        for k in keys.iter().filter(|k| !counts.contains_key(k)) {
            match table.remove(k) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(name)(e)),
            }
        }
        for (k, n) in &counts {
            table.insert(*k, *n, 0).map_err(map_err(name))?;
        }
        Ok((stale.len(), counts.len()))
    }

    /// Write flows into the flow table, as if their handshakes had completed here:
    /// how a benchmark fills the table to size. Existing entries with the same keys
    /// are replaced.
    pub fn insert_flows(&mut self, flows: impl IntoIterator<Item = (FlowKey, Flow)>) -> Result<(), Error> {
        let name = map::FLOWS;
        let mut table: HashMap<&mut MapData, FlowKey, Flow> =
            HashMap::try_from(self.map_mut(name)?).map_err(map_err(name))?;
        for (key, flow) in flows {
            table.insert(key, flow, 0).map_err(map_err(name))?;
        }
        Ok(())
    }

    /// Empty the state tables.
    pub fn clear_state(&mut self) -> Result<(), Error> {
        for name in [map::FLOWS, map::EMBRYOS, map::EMBRYOS_OUT, map::UDP_FLOWS] {
            let mut keys = Vec::new();
            self.each::<FlowKey, Flow>(name, |k, _| keys.push(*k))?;
            let mut table: HashMap<&mut MapData, FlowKey, Flow> =
                HashMap::try_from(self.map_mut(name)?).map_err(map_err(name))?;
            for k in keys {
                match table.remove(&k) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(map_err(name)(e)),
                }
            }
        }
        Ok(())
    }
}

/// `struct xdp_md` for BPF_PROG_TEST_RUN: data, data_end, data_meta, ingress_ifindex,
/// rx_queue_index, egress_ifindex, all `u32`.
pub fn xdp_md(frame_len: usize, ifindex: u32) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame_len as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

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

fn sum(values: &PerCpuValues<Counter>) -> Counter {
    values.iter().fold(Counter::default(), |acc, c| Counter {
        packets: acc.packets + c.packets,
        bytes: acc.bytes + c.bytes,
    })
}

/// Refuse pinned maps that are not the object's: aya would adopt a pinned map of
/// another type or layout (one an older edge-filter left) without a word, and the
/// program would then read it wrongly.
fn check_pins(pins: &[(&'static str, PathBuf)]) -> Result<(), Error> {
    let object = aya_obj::Object::parse(OBJECT)
        .map_err(|e| Error::Corrupt { name: "the object", what: e.to_string() })?;
    for (name, path) in pins {
        if !path.exists() {
            continue;
        }
        let def = object.maps.get(*name).ok_or(Error::MissingMap { name })?;
        let info = aya::maps::MapInfo::from_pin(path).map_err(|source| Error::Pinned { path: path.clone(), source })?;
        let pinned = (info.map_type().map_or(u32::MAX, |t| t as u32), info.key_size(), info.value_size());
        let want = (def.map_type(), def.key_size(), def.value_size());
        if pinned != want {
            return Err(Error::PinnedIncompatible {
                path: path.clone(),
                what: format!(
                    "map type {} with {}-byte keys and {}-byte values, where this version has type {} with {} and {}",
                    pinned.0, pinned.1, pinned.2, want.0, want.1, want.2
                ),
            });
        }
    }
    Ok(())
}

fn insert_read(
    sets: &mut AddressSets,
    name: &'static str,
    addr: std::net::IpAddr,
    len: u32,
    own: u32,
) -> Result<(), Error> {
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

fn write_entry<K: aya::Pod>(
    table: &mut HashMap<&mut MapData, K, SetBits>,
    key: K,
    bits: Option<SetBits>,
) -> Result<(), MapError> {
    match bits {
        Some(bits) => table.insert(key, bits, 0),
        None => match table.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e),
        },
    }
}

/// A NUL-padded name, `None` when empty or not UTF-8.
fn name_str(bytes: &[u8; NAME_LEN]) -> Option<String> {
    edge_filter_common::name_of(bytes).map(str::to_owned)
}

/// The id of a row slot, `None` when unused.
fn rule_id(r: &Rule) -> Option<String> {
    name_str(&r.id)
}

/// The value of `EDGE_LENS` for these prefix lengths (duplicates allowed), or `None`
/// when a family has more than the kernel looks up. Hints are taken at the shortest
/// length (0 when the family is empty).
/// The lengths alone, without small tables: a packet probes the hash tables.
fn prefix_lens(mut v4: Vec<u8>, mut v6: Vec<u8>) -> Option<PrefixLens> {
    let mut out = PrefixLens::default();
    for (lens, slots, count, hint) in [
        (&mut v4, &mut out.v4, &mut out.v4_count, &mut out.v4_hint),
        (&mut v6, &mut out.v6, &mut out.v6_count, &mut out.v6_hint),
    ] {
        lens.sort_unstable_by(|a, b| b.cmp(a));
        lens.dedup();
        if lens.len() > MAX_PREFIX_LENS {
            return None;
        }
        slots[..lens.len()].copy_from_slice(lens);
        *count = lens.len() as u8;
        *hint = lens.last().copied().unwrap_or(0);
    }
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
    v4.sort_by(|a, b| b.0.cmp(&a.0));
    v6.sort_by(|a, b| b.0.cmp(&a.0));
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
