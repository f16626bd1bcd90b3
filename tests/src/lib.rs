//! Test support for edge-filter: described packets ([`packet`]), a private network
//! namespace with NICs for each role ([`Lab`]), and a harness that runs described
//! cases through the real kernel object with BPF_PROG_TEST_RUN and checks the verdict
//! and every counter that moved ([`Harness`]).
//!
//! Beside the harness: the reference model of the policy ([`model`]) and the
//! differential run of the kernel program against it ([`fuzz`], [`generator`]), and
//! the kernel programs of the tests and the benchmark, not part of the filter
//! ([`programs`]).
//!
//! Privileged: the harness needs root (to unshare a network namespace and load BPF).
//! It fails with the reason when it cannot run; it never skips.

pub mod conn;
pub mod emulate;
pub mod fuzz;
pub mod generator;
pub mod model;
pub mod packet;
pub mod pair;
pub mod programs;
pub mod prosody;
pub mod subset;
pub mod topology;

use std::{
    fmt::Write as _,
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
};

use anyhow::{Context as _, bail, ensure};
use edge_filter::{AddressSets, Counters, Filter, LoadOptions, Policy, Prefix, Role, SetId, Variant};
use edge_filter_common::{MAX_RULES, verdict};

/// The test address plan (design §6): documentation ranges only.
pub mod plan {
    use super::*;

    pub const PARTNER4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 20));
    pub const PARTNER6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x5100, 0, 0, 0, 0, 0x20));
    pub const ACCESS4: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10));
    pub const ACCESS6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 0x10));
    pub const INTERNAL4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
    pub const INTERNAL6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x192, 0, 0, 0, 0, 0x10));
    pub const FRONTEND4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 20));
    pub const FRONTEND6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x198, 0, 0, 0, 0, 0x20));
    /// In the access-edge prefix of [`sets`], not an exact entry.
    pub const ACCESS_NET4: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 70));
    pub const ACCESS_NET6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x203, 1, 0, 0, 0, 0x70));

    /// The row slots of the built-in table on a fresh load: `federation-in`,
    /// `federation-out`, `internal-mtls`.
    pub const R1: u32 = 0;
    pub const R2: u32 = 1;
    pub const R3: u32 = 2;

    /// The plan's addresses of one family, with the ICMP (or ICMPv6) numbers the
    /// cases send.
    #[derive(Clone, Copy, Debug)]
    pub struct Fam {
        /// `v4` or `v6`, the start of a case's name.
        pub tag: &'static str,
        pub partner: IpAddr,
        pub access: IpAddr,
        /// In the access-edge prefix, not an exact entry.
        pub access_net: IpAddr,
        /// The A/V Edge's address ([`topology::AV4`], [`topology::AV6`]).
        pub av: IpAddr,
        pub internal: IpAddr,
        pub frontend: IpAddr,
        /// Destination unreachable (port).
        pub unreachable: (u8, u8),
        /// Fragmentation needed / packet too big.
        pub frag_needed: (u8, u8),
        pub time_exceeded: (u8, u8),
        /// Echo request.
        pub echo: u8,
    }

    impl Fam {
        /// A case of this family: its name is `what` after the family's tag.
        pub fn case(&self, what: impl std::fmt::Display, nic: Nic, frame: Vec<u8>, verdict: u32) -> Case {
            Case::new(format!("{} {what}", self.tag), nic, frame, verdict)
        }

        /// A packet of this family that `rule` allows (see [`Case::rule`]).
        pub fn rule(&self, what: impl std::fmt::Display, nic: Nic, frame: Vec<u8>, rule: u32) -> Case {
            Case::rule(format!("{} {what}", self.tag), nic, frame, rule)
        }
    }

    pub const V4: Fam = Fam {
        tag: "v4",
        partner: PARTNER4,
        access: ACCESS4,
        access_net: ACCESS_NET4,
        av: topology::AV4,
        internal: INTERNAL4,
        frontend: FRONTEND4,
        unreachable: (3, 3),
        frag_needed: (3, 4),
        time_exceeded: (11, 0),
        echo: 8,
    };
    pub const V6: Fam = Fam {
        tag: "v6",
        partner: PARTNER6,
        access: ACCESS6,
        access_net: ACCESS_NET6,
        av: topology::AV6,
        internal: INTERNAL6,
        frontend: FRONTEND6,
        unreachable: (1, 4),
        frag_needed: (2, 0),
        time_exceeded: (3, 0),
        echo: 128,
    };

    /// The cases `each` makes of each family, v4's first.
    pub fn both_families<I: IntoIterator<Item = Case>>(each: impl FnMut(Fam) -> I) -> Vec<Case> {
        [V4, V6].into_iter().flat_map(each).collect()
    }

    /// access-edge: the Edge's external addresses plus a prefix of each family;
    /// internal-edge: the Edge's internal addresses.
    pub fn sets() -> AddressSets {
        let mut s = AddressSets::default();
        insert_prefixes(&mut s, SetId::ACCESS_EDGE, &["203.0.113.10", "2001:db8:203::10", "203.0.113.64/26", "2001:db8:203:1::/64"]);
        insert_prefixes(&mut s, SetId::INTERNAL_EDGE, &["192.0.2.10", "2001:db8:192::10"]);
        s
    }

    /// Add each of `prefixes` to `set`; a prefix that does not parse or fit panics,
    /// naming it.
    pub fn insert_prefixes(sets: &mut AddressSets, set: SetId, prefixes: &[&str]) {
        for p in prefixes {
            let prefix = p.parse::<Prefix>().unwrap_or_else(|e| panic!("prefix {p}: {e}"));
            sets.insert(set, prefix).unwrap_or_else(|e| panic!("{p} into set {set:?}: {e}"));
        }
    }
}

/// Make sure `/sys/fs/bpf` is a bpffs, mounting one when the machine has none (as the
/// daemon does on its first start).
pub fn bpffs() -> anyhow::Result<std::path::PathBuf> {
    let root = std::path::PathBuf::from("/sys/fs/bpf");
    let mounted = |p: &std::path::Path| {
        std::fs::read_to_string("/proc/self/mounts")
            .is_ok_and(|m| m.lines().any(|l| l.split(' ').nth(1) == p.to_str() && l.split(' ').nth(2) == Some("bpf")))
    };
    if !mounted(&root) {
        std::fs::create_dir_all(&root)?;
        let status = std::process::Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&root).status()?;
        ensure!(status.success() && mounted(&root), "mount -t bpf bpf {}: {status}", root.display());
    }
    Ok(root)
}

/// The NIC a test frame arrives on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nic {
    Outside,
    Edge,
    Host,
    /// A NIC the program serves without a role.
    Unattached,
}

impl Nic {
    pub const ALL: [Nic; 4] = [Nic::Outside, Nic::Edge, Nic::Host, Nic::Unattached];

    /// The role of the NIC, `None` for the one without.
    pub fn role(self) -> Option<Role> {
        match self {
            Nic::Outside => Some(Role::Outside),
            Nic::Edge => Some(Role::Edge),
            Nic::Host => Some(Role::Host),
            Nic::Unattached => None,
        }
    }
}

/// A private network namespace for the calling thread, with one veth pair per two
/// NICs. Dropping it returns the thread to its namespace; the kernel then frees the
/// namespace and its devices, so nothing outlives the test, even when it panics.
pub struct Lab {
    original: File,
    names: Vec<String>,
}

impl Lab {
    /// Enter a fresh network namespace and create the devices `names` (an even number:
    /// they are made as veth pairs, `names[0]`-`names[1]`, ...; none may be `vethN`).
    pub fn new(names: &[&str]) -> anyhow::Result<Self> {
        ensure!(names.len().is_multiple_of(2), "veth devices come in pairs");
        let original = File::open("/proc/thread-self/ns/net").context("open own network namespace")?;
        // SAFETY: unshare takes flags only; it affects the calling thread's namespaces.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            bail!("unshare(CLONE_NEWNET): {}: the privileged tests need root (CAP_SYS_ADMIN)", std::io::Error::last_os_error());
        }
        let lab = Self { original, names: names.iter().map(|s| s.to_string()).collect() };
        for pair in names.chunks(2) {
            // A child forked from this thread starts in this thread's namespace. The
            // peer gets the kernel's first free name (veth0 in a fresh namespace) and is
            // renamed: busybox `ip`, in the kernel-matrix VMs, ignores `peer name`.
            topology::ip(&["link", "add", "name", pair[0], "type", "veth"])?;
            topology::ip(&["link", "set", "veth0", "name", pair[1]])?;
        }
        Ok(lab)
    }

    /// The ifindex of a device of this lab.
    pub fn ifindex(&self, name: &str) -> anyhow::Result<u32> {
        ensure!(self.names.iter().any(|n| n == name), "{name} is not a device of this lab");
        let c = std::ffi::CString::new(name)?;
        // SAFETY: a NUL-terminated string that lives across the call.
        let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
        ensure!(index != 0, "if_nametoindex({name}): {}", std::io::Error::last_os_error());
        Ok(index)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // SAFETY: a namespace fd we opened; setns only changes this thread's namespace.
        let rc = unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            eprintln!("setns back to the original namespace: {}", std::io::Error::last_os_error());
        }
    }
}

/// One packet and what must happen to it.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub nic: Nic,
    pub frame: Vec<u8>,
    /// The verdict, one of `edge_filter_common::verdict`.
    pub verdict: u32,
    /// The rule whose hit counter must move, if any.
    pub rule: Option<u32>,
}

impl Case {
    pub fn new(name: impl Into<String>, nic: Nic, frame: Vec<u8>, verdict: u32) -> Self {
        Self { name: name.into(), nic, frame, verdict, rule: None }
    }

    /// A packet a rule allows: `pass/rule` and a hit on `rule`.
    pub fn rule(name: impl Into<String>, nic: Nic, frame: Vec<u8>, rule: u32) -> Self {
        Self { rule: Some(rule), ..Self::new(name, nic, frame, verdict::PASS_RULE) }
    }
}

/// The row slot of `id` once `p` is written over a fresh load, which holds the
/// built-in table: its ids keep their slots, the others take the free ones in order.
pub fn row_slot(p: &Policy, id: &str) -> u32 {
    let fresh: Vec<Option<String>> = Policy::default().rules.rows().iter().map(|r| Some(r.id.clone())).collect();
    let (slots, _) = edge_filter::rules::place(&fresh, &p.rules);
    let i = p.rules.rows().iter().position(|r| r.id == id).unwrap_or_else(|| panic!("no row {id}"));
    slots[i] as u32
}

/// The real kernel object, loaded, with one NIC per role in a private namespace.
pub struct Harness {
    pub filter: Filter,
    nics: Vec<(Nic, u32, u32)>,
    /// Kernels before 5.13 run test frames on the loopback device only: then each
    /// case gives the loopback device the role of its NIC, through this handle.
    loopback: Option<std::cell::RefCell<edge_filter::Maps>>,
    // Dropped last: the namespace must outlive nothing that uses its ifindexes.
    _lab: Lab,
}

impl Harness {
    /// Load the object with `policy` and the plan's address sets.
    pub fn new(policy: Policy) -> anyhow::Result<Self> {
        Self::with_sets(policy, &plan::sets())
    }

    pub fn with_sets(policy: Policy, sets: &AddressSets) -> anyhow::Result<Self> {
        Self::build(policy, sets, LoadOptions::default())
    }

    /// Load with state tables of these sizes.
    pub fn with_tables(policy: Policy, max_flows: u32, max_embryos: u32) -> anyhow::Result<Self> {
        Self::build(policy, &plan::sets(), LoadOptions { max_flows, max_embryos, ..LoadOptions::default() })
    }

    /// Load with UDP table of this size.
    pub fn with_udp_table(policy: Policy, sets: &AddressSets, max_udp_flows: u32) -> anyhow::Result<Self> {
        Self::build(policy, sets, LoadOptions { max_udp_flows, ..LoadOptions::default() })
    }

    /// Load the given program variant with `policy` and the plan's address sets.
    pub fn with_variant(policy: Policy, variant: Variant) -> anyhow::Result<Self> {
        Self::build(policy, &plan::sets(), LoadOptions { variant: Some(variant), ..LoadOptions::default() })
    }

    /// Load with `policy`, `sets` and load options of the caller's choosing.
    pub fn build(policy: Policy, sets: &AddressSets, opts: LoadOptions) -> anyhow::Result<Self> {
        let lab = Lab::new(&["outside0", "edge0", "host0", "spare0"])?;
        let mut filter = Filter::load(&opts).context("load the XDP program")?;
        filter.maps_mut().set_address_sets(sets)?;
        filter.maps_mut().set_policy(&policy)?;
        let mut nics = Vec::new();
        for (nic, dev) in Nic::ALL.into_iter().zip(["outside0", "edge0", "host0", "spare0"]) {
            let ifindex = lab.ifindex(dev)?;
            let slot = match nic.role() {
                Some(role) => filter.maps_mut().set_iface(ifindex, role)?,
                None => 0,
            };
            nics.push((nic, ifindex, slot));
        }
        let loopback = if Filter::test_run_takes_context() { None } else { Some(std::cell::RefCell::new(filter.maps().reopen()?)) };
        Ok(Self { filter, nics, loopback, _lab: lab })
    }

    /// The ifindex and counter slot of a NIC.
    pub fn nic(&self, nic: Nic) -> (u32, u32) {
        let (_, ifindex, slot) = self.nics.iter().find(|(n, ..)| *n == nic).expect("every NIC exists");
        (*ifindex, *slot)
    }

    /// Empty the state tables, as after a fresh load.
    pub fn reset_state(&mut self) -> anyhow::Result<()> {
        self.filter.maps_mut().clear_state()?;
        Ok(())
    }

    /// Run one case; `Err` describes every way it went wrong.
    pub fn check(&self, case: &Case) -> anyhow::Result<()> {
        let (ifindex, slot) = self.prepare(case.nic)?;
        let before = self.filter.maps().counters()?;
        let action = self.send(&case.frame, ifindex)?;
        let after = self.filter.maps().counters()?;
        let mut problems = String::new();
        let want_action = if verdict::is_drop(case.verdict) { XDP_DROP } else { XDP_PASS };
        if action != want_action {
            let _ = write!(problems, " action {} (want {});", action_name(action), action_name(want_action));
        }
        problems.push_str(&counter_problems(&before, &after, slot, case));
        if problems.is_empty() { Ok(()) } else { bail!("{} [{:?}, {} bytes]:{problems}", case.name, case.nic, case.frame.len()) }
    }

    /// Get ready to send a frame as arriving on `nic`: the ifindex to give the test
    /// run (`None`: the loopback device of kernels before 5.13, which then takes the
    /// NIC's role) and the counter slot the frame will count under.
    pub fn prepare(&self, nic: Nic) -> anyhow::Result<(Option<u32>, u32)> {
        let (ifindex, slot) = self.nic(nic);
        let Some(lo) = &self.loopback else {
            return Ok((Some(ifindex), slot));
        };
        const LOOPBACK: u32 = 1;
        let slot = match nic.role() {
            Some(role) => lo.borrow_mut().set_iface(LOOPBACK, role)?,
            None => {
                lo.borrow_mut().remove_iface(LOOPBACK)?;
                0
            }
        };
        Ok((None, slot))
    }

    /// Run one frame (after [`Harness::prepare`]); the XDP action.
    pub fn send(&self, frame: &[u8], ifindex: Option<u32>) -> anyhow::Result<u32> {
        Ok(match ifindex {
            Some(ix) => self.filter.test_run(frame, ix)?,
            None => self.filter.test_run_on_loopback(frame)?,
        })
    }

    /// Run cases in order (a sequence shares flow state); all failures are reported.
    pub fn check_all(&self, cases: &[Case]) -> anyhow::Result<()> {
        let failures: Vec<String> = cases.iter().filter_map(|c| self.check(c).err().map(|e| format!("{e:#}"))).collect();
        ensure!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
        Ok(())
    }
}

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

fn action_name(a: u32) -> &'static str {
    match a {
        0 => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        3 => "XDP_TX",
        4 => "XDP_REDIRECT",
        _ => "unknown",
    }
}

use edge_filter::report::verdict_name;

/// Exactly one packet of the frame's size under (slot, verdict), exactly one hit on
/// the expected rule, nothing else.
fn counter_problems(before: &Counters, after: &Counters, slot: u32, case: &Case) -> String {
    let mut problems = String::new();
    let delta = after.since(before);
    let want_bytes = case.frame.len() as u64;
    let mut found = false;
    for row in &delta.moved {
        if row.slot == slot && row.verdict == case.verdict && row.packets == 1 && row.bytes == want_bytes {
            found = true;
        } else {
            let _ =
                write!(problems, " counter slot {} {}/{} moved by {} packets {} bytes;", row.slot, row.action, row.reason, row.packets, row.bytes);
        }
    }
    if !found {
        let _ = write!(problems, " want slot {slot} {} +1 packet +{want_bytes} bytes;", verdict_name(case.verdict));
    }
    for r in 0..MAX_RULES {
        let want = u64::from(case.rule == Some(r));
        let got = delta.rules[r as usize].packets;
        if got != want {
            let _ = write!(problems, " row slot {r} hits +{got} (want +{want});");
        }
    }
    problems
}
