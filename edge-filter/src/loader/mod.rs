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
//!   [`AddressSets`], [`crate::policy::Role`]); address changes are computed in full
//!   and checked before the first map write, so a refused change leaves the maps as
//!   they were.
//! - The maps are typed once, when loaded or opened ([`maps`]); the reads and writes
//!   live by concern: [`policy`], [`ifaces`], [`sets`], [`counters`], [`state`].
//! - Whole maps are read in batches ([`batch`]), never an entry per system call.

use std::path::PathBuf;

mod batch;
mod counters;
mod ifaces;
mod maps;
mod policy;
mod sets;
mod state;

use aya::{
    Ebpf, EbpfLoader,
    maps::MapError,
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp},
    util::KernelVersion,
};
use edge_filter_common::{
    DEFAULT_MAX_EMBRYOS, DEFAULT_MAX_EMBRYOS_OUT, DEFAULT_MAX_FLOWS, DEFAULT_MAX_UDP_FLOWS, MAX_IFACES, MAX_IFINDEX, MAX_PREFIX_LENS, TC_PROGRAM,
    XDP_PROGRAM, XDP_PROGRAM_LINEAR, map,
};

pub use ifaces::IfaceEntry;
pub use maps::Maps;
pub use state::{FlowKeyOrd, STATE_TABLES, Table};

use crate::{
    addr::{AddrError, AddressSets},
    policy::Policy,
};

/// The kernel object, built by `build.rs`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/edge-filter"));

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

/// The loaded kernel object.
pub struct Filter {
    ebpf: Ebpf,
    maps: Maps,
    /// The program variant this kernel runs.
    program: &'static str,
}

impl Filter {
    /// The loaded object's maps, to read.
    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    /// The loaded object's maps, to write (policy, sets, NICs).
    pub fn maps_mut(&mut self) -> &mut Maps {
        &mut self.maps
    }

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
            // Each family has its tables, each of the size the options give.
            .map_max_entries(map::FLOWS4, opts.max_flows)
            .map_max_entries(map::EMBRYOS4, opts.max_embryos)
            .map_max_entries(map::EMBRYOS_OUT4, opts.max_embryos_out)
            .map_max_entries(map::UDP_FLOWS4, opts.max_udp_flows)
            .map_max_entries(map::SOURCES, opts.max_flows.saturating_mul(2));
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
            filter.maps.set_policy(&Policy::default())?;
            filter.maps.set_address_sets(&AddressSets::default())?;
        }
        Ok(filter)
    }

    /// The host-mode TC egress program, loaded on first use.
    pub fn egress_program_mut(&mut self) -> Result<&mut SchedClassifier, Error> {
        let err = |source| Error::Program { name: TC_PROGRAM, source };
        let prog: &mut SchedClassifier = self.ebpf.program_mut(TC_PROGRAM).ok_or(err(ProgramError::NotLoaded))?.try_into().map_err(err)?;
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

/// `struct xdp_md` for BPF_PROG_TEST_RUN: data, data_end, data_meta, ingress_ifindex,
/// rx_queue_index, egress_ifindex, all `u32`.
pub fn xdp_md(frame_len: usize, ifindex: u32) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame_len as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// Refuse pinned maps that are not the object's: aya would adopt a pinned map of
/// another type or layout (one an older edge-filter left) without a word, and the
/// program would then read it wrongly.
fn check_pins(pins: &[(&'static str, PathBuf)]) -> Result<(), Error> {
    let object = aya_obj::Object::parse(OBJECT).map_err(|e| Error::Corrupt { name: "the object", what: e.to_string() })?;
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
