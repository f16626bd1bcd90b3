//! Packets per second through a veth pair.
//!
//! The in-kernel generator (`traffic-gen`, BPF_PROG_TEST_RUN in live-frames mode)
//! transmits from `g0`, in a namespace of its own, into `r0`, whose namespace holds
//! the receiver under test. Each frame comes from another source address and port
//! (198.51.100.128-255, ports from 1024 up), so per-flow state sees a new key on
//! every frame. Sender and receiver share one CPU: a rate is 1 / (generator +
//! receiver), and the floor measured in the same round says what the generator and
//! the veth cost without a filter.
//!
//! Receivers: no filter (the stack; GRO on, so veth delivers the generator's frames),
//! the XDP floors, edge-filter, xdp-filter, nftables at netdev ingress and in an inet
//! input chain. The drop frame is TCP to access-edge port 80 (`drop/no_rule`); the
//! pass frame is a data segment of an established R1 flow, the table filled with every
//! flow the generator will send on.

use std::{collections::BTreeMap, net::Ipv4Addr, process::Command, time::Duration};

use anyhow::{Context as _, ensure};
use aya::programs::{XdpMode, xdp::XdpLinkId};
use edge_filter::{Filter, LoadOptions, Policy, Role};
use edge_filter_common::{Flow, FlowKey, verdict};

use super::{
    Figure, Plan,
    cost::{Floor, established_r1},
    rivals, rotated,
};
use edge_filter_tests::{
    Lab,
    packet::{flags::*, tcp},
    plan::*,
    topology::{Netns, flood, mac_in, mac_of},
};

/// What receives the frames on `r0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receiver {
    NoFilter,
    Floor,
    EdgeFilter,
    XdpFilter(rivals::XdpFilterFeatures),
    Nft(rivals::Nft),
}

impl Receiver {
    pub fn name(self) -> &'static str {
        match self {
            Receiver::NoFilter => "no filter",
            Receiver::Floor => "floor",
            Receiver::EdgeFilter => "edge-filter",
            Receiver::XdpFilter(rivals::XdpFilterFeatures::Tcp) => "xdp-filter tcp",
            Receiver::XdpFilter(rivals::XdpFilterFeatures::All) => "xdp-filter all",
            Receiver::Nft(n) => n.name(),
        }
    }
}

/// The drop path's receivers, and the pass path's.
pub const DROP_RECEIVERS: [Receiver; 7] = [
    Receiver::Floor,
    Receiver::EdgeFilter,
    Receiver::XdpFilter(rivals::XdpFilterFeatures::Tcp),
    Receiver::XdpFilter(rivals::XdpFilterFeatures::All),
    Receiver::Nft(rivals::Nft::NetdevIngress),
    Receiver::Nft(rivals::Nft::InetInput),
    Receiver::NoFilter,
];
pub const PASS_RECEIVERS: [Receiver; 3] = [Receiver::Floor, Receiver::EdgeFilter, Receiver::NoFilter];

/// Mpps of one path, per receiver.
#[derive(Clone, Debug)]
pub struct Rates {
    pub path: &'static str,
    pub figures: Vec<(Receiver, Figure)>,
}

/// The two namespaces and what is loaded for them.
struct Rig {
    /// The receiver's namespace, which this thread is in.
    _lab: Lab,
    sender: Netns,
    filter: Filter,
    slot: u32,
    floor: Floor,
    drop_frame: Vec<u8>,
    pass_frame: Vec<u8>,
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ethtool -S r0` as name -> value.
fn r0_stats() -> anyhow::Result<BTreeMap<String, u64>> {
    let text = run(Command::new("ethtool").args(["-S", "r0"])).context("ethtool (Debian package ethtool)")?;
    Ok(text.lines().filter_map(|l| l.split_once(':')).filter_map(|(k, v)| Some((k.trim().to_owned(), v.trim().parse().ok()?))).collect())
}

fn xdp_drops() -> anyhow::Result<u64> {
    Ok(r0_stats()?.iter().filter(|(k, _)| k.ends_with("xdp_drops")).map(|(_, v)| *v).sum())
}

/// `ip -json -stats link show dev r0` (sysfs shows the machine's devices, not this
/// thread's namespace's).
fn r0_link() -> anyhow::Result<serde_json::Value> {
    let text = run(Command::new("ip").args(["-json", "-stats", "link", "show", "dev", "r0"]))?;
    Ok(serde_json::from_str::<serde_json::Value>(&text)?[0].take())
}

/// Packets r0 took in, whatever became of them (XDP verdicts included).
fn r0_rx_packets() -> anyhow::Result<u64> {
    r0_link()?["stats64"]["rx"]["packets"].as_u64().context("rx packets of r0")
}

/// The flow the generator's `n`th frame belongs to (see `tests/ebpf/src/gen.rs`).
pub(super) fn generated_flow(n: u32, now_ns: u64) -> (FlowKey, Flow) {
    let src = Ipv4Addr::new(198, 51, 100, 128 + (n % 128) as u8);
    established_r1(src, 1024 + ((n / 128) % 64512) as u16, now_ns)
}

impl Rig {
    fn new(plan: &Plan) -> anyhow::Result<Self> {
        let lab = Lab::new(&["r0", "g0"])?;
        let sender = Netns::new("bench-gen")?;
        edge_filter_tests::topology::ip(&["link", "set", "g0", "netns", &sender.name])?;
        sender.ip(&["link", "set", "g0", "up"])?;
        for args in [
            &["link", "set", "lo", "up"][..],
            &["link", "set", "r0", "up"],
            &["addr", "add", "203.0.113.10/24", "dev", "r0"],
            &["addr", "add", "192.0.2.10/24", "dev", "r0"],
            // Replies (RSTs of the stack) go back to the generator's side.
            &["neigh", "add", "203.0.113.1", "lladdr", "02:00:00:00:00:01", "dev", "r0", "nud", "permanent"],
            &["route", "add", "198.51.100.0/24", "via", "203.0.113.1", "dev", "r0"],
        ] {
            edge_filter_tests::topology::ip(args)?;
        }
        // veth hands XDP_TX frames of its peer to NAPI only, which GRO turns on.
        run(Command::new("ethtool").args(["-K", "r0", "gro", "on"]))?;
        let r0_mac = mac_in(&r0_link()?).context("MAC of r0")?;
        let g0_mac = mac_of(&sender, "g0")?;
        let frame = |mut f: Vec<u8>| {
            f[..6].copy_from_slice(&r0_mac);
            f[6..12].copy_from_slice(&g0_mac);
            f
        };
        let drop_frame = frame(tcp(PARTNER4, ACCESS4, 1024, 80, SYN).build());
        let pass_frame = frame(tcp(PARTNER4, ACCESS4, 1024, 5269, ACK | PSH).seq_ack(1001, 5001).payload(100).build());

        let max_flows = (u64::from(plan.frames) * 2).next_power_of_two().max(1 << 16) as u32;
        let mut filter = Filter::load(&LoadOptions { max_flows, ..LoadOptions::default() })?;
        filter.maps_mut().set_policy(&Policy::default())?;
        filter.maps_mut().set_address_sets(&sets())?;
        let ifindex = edge_filter::pins::ifindex("r0")?;
        let slot = filter.maps_mut().set_iface(ifindex, Role::Outside)?;
        let now = edge_filter::report::monotonic_ns();
        filter.maps_mut().insert_flows((1..=plan.frames).map(|n| generated_flow(n, now)))?;
        Ok(Self { _lab: lab, sender, filter, slot, floor: Floor::load()?, drop_frame, pass_frame })
    }

    /// Send `frames` of `frame` through `receiver`; Mpps. Checks where they went.
    fn measure(&mut self, receiver: Receiver, pass: bool, frames: u32) -> anyhow::Result<f64> {
        let frame = if pass { self.pass_frame.clone() } else { self.drop_frame.clone() };
        let want = if pass { verdict::PASS_RULE } else { verdict::DROP_NO_RULE };
        let what = format!("{} {}", receiver.name(), if pass { "pass" } else { "drop" });
        let drops_before = xdp_drops()?;
        let rx_before = r0_rx_packets()?;
        // The verdict's counter, and those of the verdicts a generated frame could get
        // instead. (The NIC also takes the odd frame of its own, neighbour discovery,
        // which counts elsewhere.)
        let counted = |f: &Filter| -> anyhow::Result<(u64, u64)> {
            let all = f.maps().slot_counters(self.slot)?;
            let wrong = [verdict::PASS_RULE, verdict::PASS_REPLY, verdict::DROP_NO_RULE, verdict::DROP_SPOOFED, verdict::DROP_MALFORMED]
                .into_iter()
                .filter(|v| *v != want)
                .map(|v| all[v as usize].packets)
                .sum();
            Ok((all[want as usize].packets, wrong))
        };
        let mut attached: Option<XdpLinkId> = None;
        let edge_before = counted(&self.filter)?;
        match receiver {
            Receiver::NoFilter => {}
            Receiver::Floor => {
                let prog = self.floor.of_mut(!pass);
                attached = Some(prog.attach("r0", XdpMode::Driver).context("attach the floor to r0")?);
            }
            Receiver::EdgeFilter => {
                attached = Some(self.filter.program_mut()?.attach("r0", XdpMode::Driver).context("attach edge-filter to r0")?);
            }
            Receiver::XdpFilter(f) => {
                rivals::xdp_filter("r0", f)?;
            }
            Receiver::Nft(n) => n.install("r0")?,
        }
        let took = flood(&self.sender, "g0", frame, frames);
        let nft_dropped = match receiver {
            Receiver::Nft(n) => Some(n.dropped()),
            _ => None,
        };
        // Take the receiver down before anything can fail, so the next one starts clean.
        match receiver {
            Receiver::Floor => self.floor.of_mut(!pass).detach(attached.take().expect("attached"))?,
            Receiver::EdgeFilter => self.filter.program_mut()?.detach(attached.take().expect("attached"))?,
            Receiver::XdpFilter(_) => edge_filter_tests::topology::ip(&["link", "set", "dev", "r0", "xdp", "off"])?,
            Receiver::Nft(n) => n.remove()?,
            Receiver::NoFilter => {}
        }
        let took: Duration = took?;
        let n = u64::from(frames);
        // Frames the receiver judged. The generator can outrun a slow receiver: veth
        // then drops what its ring cannot hold, before any filter sees it, and the
        // rate of judged frames is what the receiver holds (nftables in an input
        // chain judged a sixth of the frames sent in one run here).
        let judged = match receiver {
            Receiver::EdgeFilter => {
                let (right, wrong) = counted(&self.filter)?;
                let (right, wrong) = (right - edge_before.0, wrong - edge_before.1);
                // Every generated frame edge-filter saw got the verdict the path is about.
                ensure!(wrong == 0, "{what}: {right} frames judged {}, {wrong} otherwise", edge_filter::report::verdict_name(want));
                right
            }
            // The NIC's own odd frame (neighbour discovery) is dropped here too.
            Receiver::Floor | Receiver::XdpFilter(_) if !pass => (xdp_drops()? - drops_before).min(n),
            Receiver::Nft(_) => nft_dropped.expect("nft")?,
            // The device also takes in the odd frame of its own (neighbour discovery).
            _ => (r0_rx_packets()? - rx_before).min(n),
        };
        ensure!(
            judged > 0 && judged <= n,
            "{what}: {judged} of {n} frames judged{}",
            if receiver == Receiver::EdgeFilter { format!(" as {}", edge_filter::report::verdict_name(want)) } else { String::new() }
        );
        Ok(judged as f64 / took.as_secs_f64() / 1e6)
    }
}

/// All throughput figures, `plan.rounds` rounds.
pub fn rates(plan: &Plan) -> anyhow::Result<Vec<Rates>> {
    let mut rig = Rig::new(plan)?;
    let mut out = vec![
        Rates { path: "drop", figures: DROP_RECEIVERS.iter().map(|r| (*r, Figure::default())).collect() },
        Rates { path: "pass", figures: PASS_RECEIVERS.iter().map(|r| (*r, Figure::default())).collect() },
    ];
    for round in 0..plan.rounds {
        for (pass, receivers) in [(false, &DROP_RECEIVERS[..]), (true, &PASS_RECEIVERS[..])] {
            let mut mpps = BTreeMap::new();
            for r in rotated(receivers, round) {
                mpps.insert(r.name(), rig.measure(r, pass, plan.frames)?);
            }
            let floor = mpps[Receiver::Floor.name()];
            let rates = &mut out[usize::from(pass)];
            for (r, fig) in &mut rates.figures {
                fig.record(mpps[r.name()], floor);
            }
        }
    }
    Ok(out)
}
