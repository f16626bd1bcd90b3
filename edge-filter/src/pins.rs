//! The pin directory: what keeps the filter in place when no process holds it.
//!
//! Layout under the pin directory (default `/sys/fs/bpf/edge-filter`):
//! - `maps/<MAP>`: every map, so counters, flows, roles and sets outlive the daemon;
//! - `links/<ifname>`: one XDP link per NIC; the link holds the program on the NIC;
//! - `tc/<ifname>`: for `host` NICs, the TCX link of the egress program (kernel 6.6+).
//!   Older kernels attach it as a clsact filter at a fixed priority and handle
//!   ([`TC_PRIORITY`], [`TC_HANDLE`]), which the kernel keeps without a pin and a new
//!   `run` replaces in place.
//!
//! Contract:
//! - Attaching to a NIC that already has our pinned link replaces the program in that
//!   link atomically (`BPF_LINK_UPDATE`): there is no instant without a filter.
//! - Another XDP program on the NIC is never replaced; the error names its id.
//! - Detaching removes the link pin (the kernel detaches when the last reference goes)
//!   and, when no link is left, the map pins and the directory.
//! - Commands take an exclusive `flock` on the directory, so two of them never
//!   interleave their changes.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Command,
};

use aya::{
    programs::{
        TcAttachType, XdpMode,
        links::{FdLink, Link as _, LinkError, PinnedLink},
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle, qdisc_add_clsact},
        xdp::XdpLink,
    },
    util::KernelVersion,
};

use crate::{config::Mode, loader::Filter};

/// Why the pin directory or an attachment was refused.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not on a bpffs (mount one with `mount -t bpf bpf {}`)", dir.display(), dir.parent().unwrap_or(dir).display())]
    NotBpffs { dir: PathBuf },
    #[error("unknown interface `{name}`")]
    UnknownInterface { name: String },
    #[error("interface `{name}` already has XDP program id {id} that edge-filter did not attach; detach it first (`ip link set dev {name} xdp off`)")]
    Foreign { name: String, id: u32 },
    #[error("interface `{name}` has ifindex {ifindex}; edge-filter serves interfaces whose ifindex is below {max}")]
    IfindexTooHigh { name: String, ifindex: u32, max: u32 },
    #[error("attaching to `{name}` in {mode} mode")]
    Attach {
        name: String,
        mode: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("pinned link {}", path.display())]
    Link {
        path: PathBuf,
        #[source]
        source: LinkError,
    },
    #[error("{0}")]
    Loader(#[from] crate::loader::Error),
    #[error("this kernel attached XDP to `{name}` without a BPF link (before 5.9); edge-filter needs links to survive restarts")]
    NoLink { name: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PinError + '_ {
    move |source| PinError::Io { path: path.to_owned(), source }
}

/// A pin directory.
#[derive(Clone, Debug)]
pub struct Pins {
    dir: PathBuf,
}

/// What an attachment did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    /// `native` or `skb`, or `kept` when an existing link's mode was kept.
    pub mode: &'static str,
    /// The program in an existing link was replaced.
    pub replaced: bool,
    /// In `auto` mode, why native mode was refused before generic mode was taken.
    pub native_refused: Option<String>,
}

/// An XDP link found under `links/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkEntry {
    pub interface: String,
    pub link_id: u32,
    pub program_id: u32,
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// clsact filter priority of the egress program on kernels without TCX.
pub const TC_PRIORITY: u16 = 0xef00;
/// clsact filter handle of the egress program on kernels without TCX.
pub const TC_HANDLE: TcHandle = TcHandle::new(0, 0xef);

/// How the egress program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EgressAttach {
    /// A TCX link, pinned (kernel 6.6+).
    Tcx,
    /// A clsact filter at [`TC_PRIORITY`] / [`TC_HANDLE`].
    Clsact,
}

impl EgressAttach {
    /// TCX where the kernel has it; `EDGE_FILTER_TC_ATTACH=clsact` forces the older
    /// path (so it can be tested on new kernels).
    pub fn for_kernel() -> Self {
        if std::env::var("EDGE_FILTER_TC_ATTACH").is_ok_and(|v| v == "clsact") {
            return EgressAttach::Clsact;
        }
        match KernelVersion::current() {
            Ok(v) if v < KernelVersion::new(6, 6, 0) => EgressAttach::Clsact,
            _ => EgressAttach::Tcx,
        }
    }
}

impl Pins {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.dir.join("maps")
    }

    fn links_dir(&self) -> PathBuf {
        self.dir.join("links")
    }

    fn link_path(&self, iface: &str) -> PathBuf {
        self.links_dir().join(iface)
    }

    fn tc_dir(&self) -> PathBuf {
        self.dir.join("tc")
    }

    fn tc_path(&self, iface: &str) -> PathBuf {
        self.tc_dir().join(iface)
    }

    /// Attach the host-mode egress program to `iface`, or replace the program of our
    /// earlier attachment in place.
    pub fn attach_egress(&self, filter: &mut Filter, iface: &str, how: EgressAttach) -> Result<bool, PinError> {
        let program = filter.egress_program_mut()?;
        let err = |source| PinError::Attach { name: iface.to_owned(), mode: "tc egress", source };
        match how {
            EgressAttach::Tcx => {
                let path = self.tc_path(iface);
                if path.exists() {
                    let pinned = PinnedLink::from_pin(&path).map_err(|source| PinError::Link { path: path.clone(), source })?;
                    let link = SchedClassifierLink::try_from(FdLink::from(pinned))
                        .map_err(|source| PinError::Link { path: path.clone(), source })?;
                    program.attach_to_link(link).map_err(err)?;
                    return Ok(true);
                }
                std::fs::create_dir_all(self.tc_dir()).map_err(io(&self.tc_dir()))?;
                let id = program.attach(iface, TcAttachType::Egress).map_err(err)?;
                let link = program.take_link(id).map_err(err)?;
                let fd = FdLink::try_from(link).map_err(|source| PinError::Link { path: path.clone(), source })?;
                fd.pin(&path).map_err(|e| PinError::Io { path: path.clone(), source: std::io::Error::other(e.to_string()) })?;
                Ok(false)
            }
            EgressAttach::Clsact => {
                // The qdisc may exist already; attaching tells if it really is missing.
                let _ = qdisc_add_clsact(iface);
                let ours = SchedClassifierLink::attached(iface, TcAttachType::Egress, TC_PRIORITY, TC_HANDLE, None)
                    .map_err(|source| PinError::Io { path: PathBuf::from(iface), source })?;
                // A link the program keeps is detached when the program is dropped;
                // taken out and forgotten, the filter stays with the kernel.
                if let Ok(id) = program.attach_to_link(ours) {
                    std::mem::forget(program.take_link(id).map_err(err)?);
                    return Ok(true);
                }
                let opts = NlOptions { priority: TC_PRIORITY, handle: TC_HANDLE, ..NlOptions::default() };
                let id = program.attach_with_options(iface, TcAttachType::Egress, TcAttachOptions::Netlink(opts)).map_err(err)?;
                std::mem::forget(program.take_link(id).map_err(err)?);
                Ok(false)
            }
        }
    }

    /// Remove the egress program from `iface`, however it was attached.
    pub fn detach_egress(&self, iface: &str) -> Result<(), PinError> {
        let path = self.tc_path(iface);
        if path.exists() {
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
        if let Ok(link) = SchedClassifierLink::attached(iface, TcAttachType::Egress, TC_PRIORITY, TC_HANDLE, None) {
            // Absent unless the clsact path attached it.
            let _ = link.detach();
        }
        Ok(())
    }

    /// The NICs with a pinned egress link.
    pub fn egress_links(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.tc_dir())
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Whether a filter has pinned its maps here.
    pub fn exists(&self) -> bool {
        self.maps_dir().is_dir()
    }

    /// Create the directory on a bpffs, mounting one at its parent when there is none
    /// (the usual `/sys/fs/bpf` on a system that has not mounted it).
    pub fn create(&self) -> Result<(), PinError> {
        let parent = self.dir.parent().unwrap_or(&self.dir).to_owned();
        std::fs::create_dir_all(&parent).map_err(io(&parent))?;
        if !on_bpffs(&parent) {
            let ok = Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&parent).status().is_ok_and(|s| s.success());
            if !ok || !on_bpffs(&parent) {
                return Err(PinError::NotBpffs { dir: self.dir.clone() });
            }
        }
        for d in [self.dir.clone(), self.maps_dir(), self.links_dir()] {
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        Ok(())
    }

    /// Hold an exclusive lock on the directory until the returned file is dropped.
    pub fn lock(&self) -> Result<File, PinError> {
        lock_dir(&self.dir).map_err(io(&self.dir))
    }

    /// Attach `filter`'s program to `iface`, or replace the program in the link we
    /// pinned there before.
    pub fn attach(&self, filter: &mut Filter, iface: &str, mode: Mode) -> Result<Attached, PinError> {
        let path = self.link_path(iface);
        let program = filter.program_mut()?;
        if path.exists() {
            let pinned = PinnedLink::from_pin(&path).map_err(|source| PinError::Link { path: path.clone(), source })?;
            let link = XdpLink::try_from(FdLink::from(pinned))
                .map_err(|source| PinError::Link { path: path.clone(), source })?;
            program
                .attach_to_link(link)
                .map_err(|source| PinError::Attach { name: iface.to_owned(), mode: "kept", source })?;
            return Ok(Attached { mode: "kept", replaced: true, native_refused: None });
        }
        let ifindex = ifindex(iface)?;
        if let Some(id) = xdp_program_on(iface) {
            return Err(PinError::Foreign { name: iface.to_owned(), id });
        }
        let tries: &[(XdpMode, &'static str)] = match mode {
            Mode::Auto => &[(XdpMode::Driver, "native"), (XdpMode::Skb, "skb")],
            Mode::Native => &[(XdpMode::Driver, "native")],
            Mode::Skb => &[(XdpMode::Skb, "skb")],
        };
        let mut last = None;
        for (xdp_mode, name) in tries {
            match program.attach_to_if_index(ifindex, *xdp_mode) {
                Ok(id) => {
                    let link = program.take_link(id).map_err(|source| PinError::Attach { name: iface.to_owned(), mode: name, source })?;
                    let fd = FdLink::try_from(link).map_err(|_| PinError::NoLink { name: iface.to_owned() })?;
                    fd.pin(&path).map_err(|e| PinError::Io { path: path.clone(), source: std::io::Error::other(e.to_string()) })?;
                    let native_refused = last.as_ref().map(|(_, e): &(&str, aya::programs::ProgramError)| format!("{e}"));
                    return Ok(Attached { mode: name, replaced: false, native_refused });
                }
                Err(source) => last = Some((name, source)),
            }
        }
        let (name, source) = last.expect("at least one mode was tried");
        Err(PinError::Attach { name: iface.to_owned(), mode: name, source })
    }

    /// The links pinned here, by interface name.
    pub fn links(&self) -> Result<Vec<LinkEntry>, PinError> {
        let dir = self.links_dir();
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(out);
        };
        for entry in entries {
            let entry = entry.map_err(io(&dir))?;
            let path = entry.path();
            let link = PinnedLink::from_pin(&path).map_err(|source| PinError::Link { path: path.clone(), source })?;
            let info = FdLink::from(link).info().map_err(|source| PinError::Link { path: path.clone(), source })?;
            out.push(LinkEntry {
                interface: entry.file_name().to_string_lossy().into_owned(),
                link_id: info.id(),
                program_id: info.program_id(),
            });
        }
        out.sort_by(|a, b| a.interface.cmp(&b.interface));
        Ok(out)
    }

    /// Remove the link of `iface`: the kernel detaches the program from the NIC.
    pub fn detach(&self, iface: &str) -> Result<bool, PinError> {
        let path = self.link_path(iface);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(PinError::Io { path, source: e }),
        }
    }

    /// Remove the map pins and the directory (after every link is gone).
    pub fn remove_all(&self) -> Result<(), PinError> {
        for link in self.links()? {
            self.detach(&link.interface)?;
            self.detach_egress(&link.interface)?;
        }
        for iface in self.egress_links() {
            self.detach_egress(&iface)?;
        }
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).map_err(io(&self.dir))?;
        }
        Ok(())
    }
}

/// An exclusive `flock` on a directory, held until the returned file is dropped;
/// blocks until it is ours.
pub fn lock_dir(dir: &Path) -> std::io::Result<File> {
    let f = File::open(dir)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

fn on_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the struct it is given from a NUL-terminated path.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// The ifindex of a NIC in this network namespace.
pub fn ifindex(name: &str) -> Result<u32, PinError> {
    let unknown = || PinError::UnknownInterface { name: name.to_owned() };
    let c = std::ffi::CString::new(name).map_err(|_| unknown())?;
    // SAFETY: a NUL-terminated string that lives across the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 { Err(unknown()) } else { Ok(index) }
}

/// The `xdp` object of `ip -j -d link show dev IFACE`, if a program is attached.
fn xdp_info(iface: &str) -> Option<serde_json::Value> {
    let out = Command::new("ip").args(["-j", "-d", "link", "show", "dev", iface]).output().ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v.get(0)?.get("xdp").cloned()
}

/// The id of the XDP program attached to `iface`, if any.
fn xdp_program_on(iface: &str) -> Option<u32> {
    let xdp = xdp_info(iface)?;
    xdp.get("prog")
        .and_then(|p| p.get("id"))
        .or_else(|| xdp.get("attached").and_then(|a| a.get(0)).and_then(|a| a.get("prog")).and_then(|p| p.get("id")))
        .and_then(serde_json::Value::as_u64)
        .map(|id| id as u32)
}

/// The mode of the XDP program on `iface`: `native`, `skb` or `offload`.
pub fn xdp_mode(iface: &str) -> Option<&'static str> {
    // iproute2 reports XDP_ATTACHED_DRV = 1, SKB = 2, HW = 3.
    match xdp_info(iface)?.get("mode")?.as_u64()? {
        1 => Some("native"),
        2 => Some("skb"),
        3 => Some("offload"),
        _ => None,
    }
}

/// Refuse, before anything changes, a NIC that does not exist or carries an XDP
/// program that is not ours.
pub fn preflight(pins: &Pins, iface: &str) -> Result<u32, PinError> {
    let index = ifindex(iface)?;
    let max = edge_filter_common::MAX_IFINDEX;
    if index >= max {
        return Err(PinError::IfindexTooHigh { name: iface.to_owned(), ifindex: index, max });
    }
    if !pins.link_path(iface).exists()
        && let Some(id) = xdp_program_on(iface)
    {
        return Err(PinError::Foreign { name: iface.to_owned(), id });
    }
    Ok(index)
}
