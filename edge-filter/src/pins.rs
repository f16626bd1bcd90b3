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
//! - One daemon per directory: `run` holds [`DaemonLock`] for its whole life, taken
//!   before anything is touched; a second `run`, and `detach`, refuse while it is held
//!   and name the holder's pid. The lock is a file under [`LOCK_DIR`] (a bpffs holds no
//!   regular files), keyed by the directory's path.
//! - The directory's parent must be on a bpffs; only `/sys/fs/bpf` itself is mounted
//!   when it is missing, so no other directory's files are hidden by a mount.
//! - Whether a NIC carries an XDP program is asked of the kernel (rtnetlink,
//!   `IFLA_XDP`); when it cannot be asked, the answer is an error, not "none".

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
    #[error("pin directory {}: its parent {} is not on a bpffs; choose a directory under a mounted bpffs (such as /sys/fs/bpf/edge-filter), or mount one there first with `mount -t bpf bpf {}` (it hides what that directory holds); nothing changed", dir.display(), parent.display(), parent.display())]
    NotBpffs { dir: PathBuf, parent: PathBuf },
    #[error("`edge-filter run` (pid {pid}) holds {}; stop it first (SIGTERM leaves the filter attached); nothing changed", dir.display())]
    DaemonRunning { dir: PathBuf, pid: String },
    #[error(
        "cannot tell whether interface `{name}` carries an XDP program of another tool (asking the kernel over rtnetlink: {source}); nothing changed"
    )]
    XdpQuery {
        name: String,
        #[source]
        source: std::io::Error,
    },
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

/// The only bpffs `run` mounts itself when it is missing.
const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Where the daemon locks live (a bpffs holds no regular files).
pub const LOCK_DIR: &str = "/run/edge-filter";

/// The daemon lock of a pin directory (see [`Pins::daemon_lock`]); released when
/// dropped or when the process ends.
#[derive(Debug)]
pub struct DaemonLock {
    /// Holds the `flock`; closed after `drop` has unlinked the path.
    _file: File,
    path: PathBuf,
}

impl Drop for DaemonLock {
    fn drop(&mut self) {
        // The daemon's census goes with it: nobody keeps it up to date any more.
        let _ = std::fs::remove_file(census_path_of(&self.path));
        // Unlinked while still held, so /run keeps no file per pin directory ever used;
        // whoever opened it meanwhile sees it is gone and opens the path again.
        let _ = std::fs::remove_file(&self.path);
    }
}

fn census_path_of(lock: &Path) -> PathBuf {
    lock.with_extension("census.json")
}

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
                    let link = SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|source| PinError::Link { path: path.clone(), source })?;
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
        let mut out: Vec<String> =
            std::fs::read_dir(self.tc_dir()).map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default();
        out.sort();
        out
    }

    /// Whether a filter has pinned its maps here.
    pub fn exists(&self) -> bool {
        self.maps_dir().is_dir()
    }

    /// Create the directory on a bpffs. Its parent must be on one already, except the
    /// usual `/sys/fs/bpf` on a system that has not mounted it: that one is mounted. A
    /// mount anywhere else would hide the files under it, so it is refused instead.
    pub fn check_bpffs(&self) -> Result<(), PinError> {
        let parent = self.dir.parent().unwrap_or(&self.dir).to_owned();
        // The nearest directory that exists: a bpffs takes subdirectories.
        let existing = parent.ancestors().find(|a| a.exists()).unwrap_or(&parent);
        if on_bpffs(existing) || parent == Path::new(BPFFS_ROOT) {
            return Ok(());
        }
        Err(PinError::NotBpffs { dir: self.dir.clone(), parent })
    }

    /// [`Pins::check_bpffs`], then create the directory (mounting `/sys/fs/bpf` when
    /// it is the parent and not mounted).
    pub fn create(&self) -> Result<(), PinError> {
        self.check_bpffs()?;
        let parent = self.dir.parent().unwrap_or(&self.dir).to_owned();
        if parent == Path::new(BPFFS_ROOT) && !on_bpffs(&parent) {
            std::fs::create_dir_all(&parent).map_err(io(&parent))?;
            let ok = Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&parent).status().is_ok_and(|s| s.success());
            if !ok || !on_bpffs(&parent) {
                return Err(PinError::NotBpffs { dir: self.dir.clone(), parent });
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

    /// The daemon lock of this directory: held by `run` for its whole life, and by
    /// `detach` while it works. Refused at once, naming the holder's pid, when another
    /// process holds it.
    pub fn daemon_lock(&self) -> Result<DaemonLock, PinError> {
        use std::os::unix::fs::MetadataExt as _;
        let path = self.daemon_lock_path();
        std::fs::create_dir_all(LOCK_DIR).map_err(io(Path::new(LOCK_DIR)))?;
        let locked = loop {
            let file = File::options().read(true).write(true).create(true).truncate(false).open(&path).map_err(io(&path))?;
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                break Err(std::io::Error::last_os_error());
            }
            // The holder before us unlinks the file before it lets go; a lock on an
            // unlinked file is nobody's, so open the path again.
            let same = std::fs::metadata(&path).ok().zip(file.metadata().ok()).is_some_and(|(p, f)| p.ino() == f.ino() && p.dev() == f.dev());
            if same {
                break Ok(file);
            }
        };
        let mut file = match locked {
            Ok(file) => file,
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => return Err(PinError::Io { path, source: e }),
            Err(_) => return Err(PinError::DaemonRunning { dir: self.dir.clone(), pid: holder_pid(&path) }),
        };
        use std::io::Write as _;
        file.set_len(0).and_then(|()| write!(file, "{}\n{}\n", std::process::id(), self.dir.display())).map_err(io(&path))?;
        Ok(DaemonLock { _file: file, path })
    }

    /// `LOCK_DIR/<hash of the directory's path>.lock`; the path is made absolute and
    /// its existing part canonical, so `run` (before the directory exists) and `detach`
    /// find the same file.
    pub fn daemon_lock_path(&self) -> PathBuf {
        let abs = std::path::absolute(&self.dir).unwrap_or_else(|_| self.dir.clone());
        let canonical = abs
            .canonicalize()
            .or_else(|_| abs.parent().unwrap_or(&abs).canonicalize().map(|p| p.join(abs.file_name().unwrap_or_default())))
            .unwrap_or(abs);
        // FNV-1a, 64 bits: stable across builds (std's hasher is not).
        let hash = canonical
            .as_os_str()
            .as_encoded_bytes()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
        Path::new(LOCK_DIR).join(format!("{hash:016x}.lock"))
    }

    /// Where the daemon of this directory publishes its census of the state tables
    /// (`crate::census`): beside its lock, `LOCK_DIR/<hash>.census.json`.
    pub fn census_path(&self) -> PathBuf {
        census_path_of(&self.daemon_lock_path())
    }

    /// Attach `filter`'s program to `iface`, or replace the program in the link we
    /// pinned there before.
    pub fn attach(&self, filter: &mut Filter, iface: &str, mode: Mode) -> Result<Attached, PinError> {
        let path = self.link_path(iface);
        let program = filter.program_mut()?;
        if path.exists() {
            let pinned = PinnedLink::from_pin(&path).map_err(|source| PinError::Link { path: path.clone(), source })?;
            let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|source| PinError::Link { path: path.clone(), source })?;
            program.attach_to_link(link).map_err(|source| PinError::Attach { name: iface.to_owned(), mode: "kept", source })?;
            return Ok(Attached { mode: "kept", replaced: true, native_refused: None });
        }
        let ifindex = ifindex(iface)?;
        if let Some(id) = xdp_program_on(iface, ifindex)? {
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
            out.push(LinkEntry { interface: entry.file_name().to_string_lossy().into_owned(), link_id: info.id(), program_id: info.program_id() });
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

/// The pid in a held daemon lock file; its holder writes it right after taking it.
fn holder_pid(path: &Path) -> String {
    for _ in 0..50 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let pid = text.lines().next().unwrap_or_default().trim();
        if !pid.is_empty() {
            return pid.to_owned();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    "unknown".to_owned()
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

/// The IPv4 and IPv6 addresses of interface `name` in this network namespace.
pub fn addresses(name: &str) -> std::io::Result<Vec<std::net::IpAddr>> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below; each entry's
    // name is a NUL-terminated string and its address, when not null, a sockaddr of
    // the family it says (sockaddr_in or sockaddr_in6 for the two we read).
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut at = list;
        while !at.is_null() {
            let ifa = &*at;
            at = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || std::ffi::CStr::from_ptr(ifa.ifa_name).to_bytes() != name.as_bytes() {
                continue;
            }
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*ifa.ifa_addr.cast::<libc::sockaddr_in>();
                    out.push(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into());
                }
                libc::AF_INET6 => {
                    let sin6 = &*ifa.ifa_addr.cast::<libc::sockaddr_in6>();
                    out.push(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr).into());
                }
                _ => {}
            }
        }
        libc::freeifaddrs(list);
    }
    Ok(out)
}

/// What the kernel says about XDP on a NIC: the `IFLA_XDP` attribute of its
/// `RTM_GETLINK` answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct XdpState {
    /// `XDP_ATTACHED_*`: 0 none, 1 driver, 2 skb, 3 hardware, 4 several.
    attached: u8,
    /// The program's id; with several attached, the driver's, else skb's, else hardware's.
    prog_id: u32,
}

/// Ask the kernel over rtnetlink which XDP program `ifindex` carries (in this network
/// namespace). An error means the kernel could not be asked, not that there is none.
fn xdp_state(ifindex: u32) -> std::io::Result<XdpState> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    const NLMSG_HDR: usize = 16;
    const IFINFOMSG: usize = 16;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const IFLA_XDP_ATTACHED: u16 = 2;
    const IFLA_XDP_PROG_ID: u16 = 4;
    // IFLA_XDP_DRV_PROG_ID, IFLA_XDP_SKB_PROG_ID, IFLA_XDP_HW_PROG_ID.
    const IFLA_XDP_MODE_PROG_IDS: [u16; 3] = [5, 6, 7];
    const SEQ: u32 = 0xef01;

    // SAFETY: socket(2) with constant arguments; the descriptor is owned at once.
    let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor we just opened and nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };

    // nlmsghdr { len, type RTM_GETLINK, flags NLM_F_REQUEST, seq, pid 0 } and
    // ifinfomsg { family AF_UNSPEC, pad, type, index, flags, change }, native order.
    let mut req = Vec::with_capacity(NLMSG_HDR + IFINFOMSG);
    req.extend_from_slice(&((NLMSG_HDR + IFINFOMSG) as u32).to_ne_bytes());
    req.extend_from_slice(&libc::RTM_GETLINK.to_ne_bytes());
    req.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req.extend_from_slice(&SEQ.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    req.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    req.extend_from_slice(&[0; 8]);
    // SAFETY: send reads `req.len()` bytes of a live buffer on a descriptor we own.
    if unsafe { libc::send(std::os::fd::AsRawFd::as_raw_fd(&fd), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }

    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("malformed RTM_GETLINK answer: {what}"));
    let u16_at = |b: &[u8], at: usize| b.get(at..at + 2).map(|x| u16::from_ne_bytes([x[0], x[1]]));
    let u32_at = |b: &[u8], at: usize| b.get(at..at + 4).map(|x| u32::from_ne_bytes([x[0], x[1], x[2], x[3]]));
    // Netlink attributes: { len u16, type u16, value }, each padded to 4 bytes.
    let attrs = |b: &[u8]| {
        let mut out = Vec::new();
        let mut at = 0;
        while let (Some(len), Some(ty)) = (u16_at(b, at), u16_at(b, at + 2)) {
            let len = usize::from(len);
            if len < 4 || at + len > b.len() {
                break;
            }
            // NLA_TYPE_MASK: the top two bits are the nested and byte-order flags.
            out.push((ty & 0x3fff, b[at + 4..at + len].to_vec()));
            at += (len + 3) & !3;
        }
        out
    };

    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: recv writes at most `buf.len()` bytes into a live buffer.
        let n = unsafe { libc::recv(std::os::fd::AsRawFd::as_raw_fd(&fd), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let msgs = &buf[..n as usize];
        let mut at = 0;
        while let (Some(len), Some(ty), Some(seq)) = (u32_at(msgs, at), u16_at(msgs, at + 4), u32_at(msgs, at + 8)) {
            let len = len as usize;
            if len < NLMSG_HDR || at + len > msgs.len() {
                return Err(bad("message length"));
            }
            let body = &msgs[at + NLMSG_HDR..at + len];
            at += (len + 3) & !3;
            if seq != SEQ {
                continue;
            }
            match ty {
                NLMSG_ERROR => {
                    let errno = u32_at(body, 0).ok_or_else(|| bad("error message"))? as i32;
                    return Err(std::io::Error::from_raw_os_error(-errno));
                }
                NLMSG_DONE => return Err(bad("no link in the answer")),
                libc::RTM_NEWLINK => {
                    let link = attrs(body.get(IFINFOMSG..).ok_or_else(|| bad("link message"))?);
                    let Some((_, xdp)) = link.iter().find(|(ty, _)| *ty == libc::IFLA_XDP) else {
                        // A kernel without XDP support reports no IFLA_XDP at all.
                        return Ok(XdpState::default());
                    };
                    let xdp = attrs(xdp);
                    let get = |want: u16| xdp.iter().find(|(ty, _)| *ty == want).map(|(_, v)| v.as_slice());
                    let attached = get(IFLA_XDP_ATTACHED).and_then(|v| v.first().copied()).unwrap_or(0);
                    let prog_id = std::iter::once(IFLA_XDP_PROG_ID)
                        .chain(IFLA_XDP_MODE_PROG_IDS)
                        .find_map(|ty| get(ty).and_then(|v| u32_at(v, 0)).filter(|id| *id != 0))
                        .unwrap_or(0);
                    return Ok(XdpState { attached, prog_id });
                }
                _ => {}
            }
        }
    }
}

/// The id of the XDP program attached to `iface` (ifindex `index`), if any; an error
/// when the kernel cannot be asked.
fn xdp_program_on(iface: &str, index: u32) -> Result<Option<u32>, PinError> {
    let state = xdp_state(index).map_err(|source| PinError::XdpQuery { name: iface.to_owned(), source })?;
    Ok((state.attached != 0 && state.prog_id != 0).then_some(state.prog_id))
}

/// The mode of the XDP program on `iface`: `native`, `skb` or `offload`.
pub fn xdp_mode(iface: &str) -> Option<&'static str> {
    // XDP_ATTACHED_DRV = 1, SKB = 2, HW = 3 (MULTI = 4 has no single mode).
    match xdp_state(ifindex(iface).ok()?).ok()?.attached {
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
        && let Some(id) = xdp_program_on(iface, index)?
    {
        return Err(PinError::Foreign { name: iface.to_owned(), id });
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::{XdpState, xdp_state};

    #[test]
    fn the_kernel_answers_for_a_nic_and_refuses_an_unknown_one() {
        // RTM_GETLINK needs no privilege; loopback is ifindex 1 in every namespace and
        // carries no XDP program on a test machine.
        assert_eq!(xdp_state(1).expect("ask about lo"), XdpState::default());
        let e = xdp_state(0x7fff_fff0).expect_err("no such ifindex");
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV), "{e}");
    }
}
