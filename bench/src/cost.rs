//! Cost per packet, with BPF_PROG_TEST_RUN `repeat` on the real object.
//!
//! Every verdict path is one frame on one NIC of the [`Harness`] (the plan's address
//! sets, one NIC per role); paths that need a flow get its handshake first. The same
//! frame, with the same `xdp_md`, goes through the floor programs and xdp-filter in
//! the same round. The kernel reports the mean time of one run of the program over
//! the repetitions; that is the figure. Once per run, each path's frame also goes
//! through the emulator ([`edge_filter_tests::emulate`]) on the same maps, which
//! counts the instructions and the calls out of the program; its XDP action must be
//! the kernel's.
//!
//! Growth: the address sets filled to 1, 1k and 64k entries (exact addresses, and
//! prefixes), the flow table to 1, 100k and 1M flows. Each figure cycles through
//! [`KEYS`] distinct keys spread over the whole table, so the program probes different
//! buckets run after run rather than one hot entry.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, ensure};
use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use edge_filter::{AddressSets, LoadOptions, Policy, Prefix, SetId, loader::xdp_md};
use edge_filter_common::{Flow, FlowKey, TcpDir, family, flow_state, role, verdict};

use super::{Figure, Plan, rivals, rotated};
use edge_filter_tests::{
    Harness, Nic, XDP_DROP, XDP_PASS,
    emulate::Emulator,
    packet::{TPID_8021Q, arp, flags::*, tcp},
    plan::*,
};

/// Frames, each with the NIC it arrives on.
type Frames = Vec<(Nic, Vec<u8>)>;

/// Distinct keys a growth figure cycles through.
pub const KEYS: usize = 64;

/// One verdict path: a frame, the NIC it arrives on, the verdict it must get, and the
/// frames that must go first (a handshake).
#[derive(Clone, Debug)]
pub struct Path {
    pub name: String,
    pub nic: Nic,
    pub frame: Vec<u8>,
    pub verdict: u32,
    pub setup: Vec<(Nic, Vec<u8>)>,
}

impl Path {
    fn new(name: impl Into<String>, nic: Nic, frame: Vec<u8>, verdict: u32) -> Self {
        Self { name: name.into(), nic, frame, verdict, setup: Vec::new() }
    }
}

/// A completed handshake between `client`:`cport` on `opener` and `server`:`sport`
/// on `responder`, then `frame` from the opener (`back` false) or the responder.
fn on_flow(name: String, conn: (Nic, IpAddr, u16, Nic, IpAddr, u16), back: bool, verdict: u32) -> Path {
    let (opener, client, cport, responder, server, sport) = conn;
    let setup = vec![
        (opener, tcp(client, server, cport, sport, SYN).seq_ack(1000, 0).build()),
        (responder, tcp(server, client, sport, cport, SYN_ACK).seq_ack(5000, 1001).build()),
        (opener, tcp(client, server, cport, sport, ACK).seq_ack(1001, 5001).build()),
    ];
    let (nic, frame) = if back {
        (responder, tcp(server, client, sport, cport, ACK | PSH).seq_ack(5001, 1101).payload(100).build())
    } else {
        (opener, tcp(client, server, cport, sport, ACK | PSH).seq_ack(1001, 5001).payload(100).build())
    };
    Path { name, nic, frame, verdict, setup }
}

/// Every verdict path the benchmark measures.
pub fn paths() -> Vec<Path> {
    use Nic::*;
    use verdict::*;
    let mut v = vec![
        Path::new("drop/no_rule v4", Outside, tcp(PARTNER4, ACCESS4, 40000, 80, SYN).build(), DROP_NO_RULE),
        Path::new("drop/no_rule v6", Outside, tcp(PARTNER6, ACCESS6, 40000, 80, SYN).build(), DROP_NO_RULE),
        Path::new("drop/spoofed v4", Outside, tcp(ACCESS4, PARTNER4, 5269, 40000, SYN).build(), DROP_SPOOFED),
        Path::new("drop/spoofed v6", Outside, tcp(ACCESS6, PARTNER6, 5269, 40000, SYN).build(), DROP_SPOOFED),
        Path::new("drop/fragment v4", Outside, tcp(PARTNER4, ACCESS4, 40000, 5269, ACK).payload(64).fragment(185, false).build(), DROP_FRAGMENT),
    ];
    for (fam, partner, access, frontend, internal) in
        [("v4", PARTNER4, ACCESS4, FRONTEND4, INTERNAL4), ("v6", PARTNER6, ACCESS6, FRONTEND6, INTERNAL6)]
    {
        v.push(on_flow(format!("pass/rule R1 {fam}"), (Outside, partner, 41001, Edge, access, 5269), false, PASS_RULE));
        v.push(on_flow(format!("pass/rule R2 {fam}"), (Edge, access, 41002, Outside, partner, 5269), false, PASS_RULE));
        v.push(on_flow(format!("pass/rule R3 {fam}"), (Outside, frontend, 41003, Edge, internal, 23456), false, PASS_RULE));
        v.push(on_flow(format!("pass/reply {fam}"), (Outside, partner, 41004, Edge, access, 5269), true, PASS_REPLY));
    }
    v.push(Path::new("pass/rule R1 SYN v4", Outside, tcp(PARTNER4, ACCESS4, 41005, 5269, SYN).build(), PASS_RULE));
    let mut tagged = on_flow("pass/rule R1 VLAN v4".into(), (Outside, PARTNER4, 41006, Edge, ACCESS4, 5269), false, PASS_RULE);
    tagged.setup = tagged.setup.into_iter().map(|(n, f)| (n, vlan_tag(f, 42))).collect();
    tagged.frame = vlan_tag(tagged.frame, 42);
    v.push(tagged);
    v.push(Path::new("pass/essential ARP", Outside, arp([198, 51, 100, 20], [203, 0, 113, 10]), PASS_ESSENTIAL));
    v.push(Path::new("pass/unpoliced v4", Outside, tcp(PARTNER4, FRONTEND4, 40000, 443, SYN).build(), PASS_UNPOLICED));
    v
}

/// `frame` with an 802.1Q tag inserted after the MAC addresses.
fn vlan_tag(frame: Vec<u8>, vid: u16) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    out.extend(TPID_8021Q.to_be_bytes());
    out.extend(vid.to_be_bytes());
    out.extend(&frame[12..]);
    out
}

/// The programs measured on each path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contender {
    EdgeFilter,
    /// The floor of the path's action: `floor_pass` or `floor_drop`.
    Floor,
    XdpFilter(rivals::XdpFilterFeatures),
}

impl Contender {
    pub const ALL: [Contender; 4] = [
        Contender::EdgeFilter,
        Contender::Floor,
        Contender::XdpFilter(rivals::XdpFilterFeatures::Tcp),
        Contender::XdpFilter(rivals::XdpFilterFeatures::All),
    ];

    pub fn name(self) -> &'static str {
        match self {
            Contender::EdgeFilter => "edge-filter",
            Contender::Floor => "floor",
            Contender::XdpFilter(rivals::XdpFilterFeatures::Tcp) => "xdp-filter tcp",
            Contender::XdpFilter(rivals::XdpFilterFeatures::All) => "xdp-filter all",
        }
    }
}

/// Cost figures of one path: nanoseconds per packet, for each contender.
#[derive(Clone, Debug)]
pub struct PathCost {
    pub path: String,
    pub drop: bool,
    pub figures: Vec<(Contender, Figure)>,
    /// xdp-filter's actions on this path (they differ from edge-filter's: it cannot
    /// express the policy).
    pub rival_actions: Vec<(Contender, u32)>,
    /// edge-filter's bytecode on this path, counted once by the emulator
    /// ([`edge_filter_tests::emulate`]): instructions executed (0: not counted, an old
    /// record).
    pub insns: u64,
    /// Helper calls that stay calls at run time (all but array lookups).
    pub helper_calls: u64,
    /// BPF-to-BPF calls (`memcpy`, `memset` included).
    pub subprog_calls: u64,
    /// Array lookups, which the verifier inlines.
    pub inlined_lookups: u64,
}

/// The floor programs, loaded.
pub struct Floor {
    ebpf: aya::Ebpf,
}

impl Floor {
    pub fn load() -> anyhow::Result<Self> {
        let mut ebpf = aya::Ebpf::load(edge_filter_tests::programs::FLOOR).context("load the floor programs")?;
        for name in ["floor_pass", "floor_drop"] {
            let prog: &mut Xdp = ebpf.program_mut(name).with_context(|| format!("{name} missing"))?.try_into()?;
            prog.load()?;
        }
        Ok(Self { ebpf })
    }

    fn name(drop: bool) -> &'static str {
        if drop { "floor_drop" } else { "floor_pass" }
    }

    /// `floor_drop` or `floor_pass`.
    pub fn of(&self, drop: bool) -> &Xdp {
        let prog = self.ebpf.program(Self::name(drop)).expect("loaded in Floor::load");
        prog.try_into().expect("an XDP program")
    }

    pub fn of_mut(&mut self, drop: bool) -> &mut Xdp {
        let prog = self.ebpf.program_mut(Self::name(drop)).expect("loaded in Floor::load");
        prog.try_into().expect("an XDP program")
    }
}

/// What one lookup in a kernel hash table of flows costs: the floor of a tracked
/// flow (`floor_lookup12`, `floor_lookup40` of [`edge_filter_tests::programs::FLOOR`])
/// against `floor_pass`, for one key size.
#[derive(Clone, Debug)]
pub struct LookupCost {
    /// 12: an IPv4 flow's key; 40: an IPv6 flow's.
    pub key_bytes: usize,
    /// ns per packet, ratio to the floor of the same round.
    pub figure: Figure,
}

/// The key sizes of [`lookup_cost`], as its programs name them.
const LOOKUP_KEYS: [usize; 2] = [12, 40];

/// What the kernel's hash lookup costs a program that finds its flow, side by side
/// with the floor, `plan.rounds` rounds: the part of a tracked packet's cost that no
/// code of the filter's can remove while its flows live in a kernel hash table.
pub fn lookup_cost(plan: &Plan) -> anyhow::Result<Vec<LookupCost>> {
    let mut floor = Floor::load()?;
    let mut names = Vec::new();
    for bytes in LOOKUP_KEYS {
        let (prog, table) = (format!("floor_lookup{bytes}"), format!("LOOKUP{bytes}"));
        let map = floor.ebpf.map_mut(&table).with_context(|| format!("{table} missing"))?;
        let found = 1u64;
        match bytes {
            12 => aya::maps::HashMap::<_, [u8; 12], u64>::try_from(map)?.insert([0; 12], found, 0)?,
            _ => aya::maps::HashMap::<_, [u8; 40], u64>::try_from(map)?.insert([0; 40], found, 0)?,
        }
        let xdp: &mut Xdp = floor.ebpf.program_mut(&prog).with_context(|| format!("{prog} missing"))?.try_into()?;
        xdp.load()?;
        names.push(prog);
    }
    let frame = tcp(PARTNER4, ACCESS4, 41001, 5269, ACK).build();
    let mut out: Vec<LookupCost> = LOOKUP_KEYS.iter().map(|b| LookupCost { key_bytes: *b, figure: Figure::default() }).collect();
    // Index 0: the floor; then one per key size.
    let contenders: Vec<usize> = (0..=LOOKUP_KEYS.len()).collect();
    for round in 0..plan.rounds {
        let mut ns = vec![0.0; contenders.len()];
        for i in rotated(&contenders, round) {
            let prog: &Xdp = if i == 0 { floor.of(false) } else { floor.ebpf.program(&names[i - 1]).expect("loaded above").try_into()? };
            let (action, t) = run(prog, &frame, 0, plan.repeat)?;
            ensure!(action == XDP_PASS, "{}: action {action}, the lookup did not find its entry", if i == 0 { "floor_pass" } else { &names[i - 1] });
            ns[i] = t;
        }
        for (i, cost) in out.iter_mut().enumerate() {
            cost.figure.record(ns[i + 1], ns[0]);
        }
    }
    Ok(out)
}

/// Run `prog` `repeat` times on `frame` arriving on `ifindex`: (action, ns per run).
pub fn run(prog: &Xdp, frame: &[u8], ifindex: u32, repeat: u32) -> anyhow::Result<(u32, f64)> {
    let ctx = xdp_md(frame.len(), ifindex);
    let r =
        prog.test_run(TestRunOptions { data_in: Some(frame), ctx_in: Some(&ctx), repeat, ..TestRunOptions::new() }).context("BPF_PROG_TEST_RUN")?;
    Ok((r.return_value, r.duration.as_nanos() as f64))
}

fn action_of(v: u32) -> u32 {
    if verdict::is_drop(v) { XDP_DROP } else { XDP_PASS }
}

/// Send `repeat` frames through edge-filter and check the action and that the
/// verdict's counter moved by exactly `repeat`; ns per run.
fn measure_edge(h: &Harness, frame: &[u8], nic: Nic, want: u32, repeat: u32, what: &str) -> anyhow::Result<f64> {
    let (ifindex, slot) = h.nic(nic);
    let before = h.filter.maps().slot_counters(slot)?[want as usize].packets;
    let (action, ns) = run(h.filter.program()?, frame, ifindex, repeat)?;
    let after = h.filter.maps().slot_counters(slot)?[want as usize].packets;
    ensure!(action == action_of(want), "{what}: action {action}, want {}", action_of(want));
    ensure!(
        after - before == u64::from(repeat),
        "{what}: {} counter moved by {}, want {repeat}",
        edge_filter::report::verdict_name(want),
        after - before
    );
    Ok(ns)
}

/// The per-path cost figures, `plan.rounds` rounds.
pub fn paths_cost(plan: &Plan) -> anyhow::Result<Vec<PathCost>> {
    let h = Harness::new(Policy::default())?;
    let floor = Floor::load()?;
    let xdp_tcp = rivals::xdp_filter("spare0", rivals::XdpFilterFeatures::Tcp)?;
    // xdp-filter may serve one feature set per namespace's devices: the second one
    // goes on the other end of the pair.
    let xdp_all = rivals::xdp_filter("host0", rivals::XdpFilterFeatures::All)?;
    let paths = paths();
    let mut flows = 0;
    for p in &paths {
        for (nic, frame) in &p.setup {
            let action = h.send(frame, Some(h.nic(*nic).0))?;
            ensure!(action == XDP_PASS, "{}: a handshake packet got action {action}", p.name);
        }
        flows += usize::from(!p.setup.is_empty());
    }
    // Every handshake completed: the paths on a flow find it.
    let live = h.filter.maps().flows()?.len();
    ensure!(live == flows, "{live} flows after {flows} handshakes");
    let mut out: Vec<PathCost> = paths
        .iter()
        .map(|p| PathCost {
            path: p.name.clone(),
            drop: verdict::is_drop(p.verdict),
            figures: Contender::ALL.iter().map(|c| (*c, Figure::default())).collect(),
            rival_actions: Vec::new(),
            insns: 0,
            helper_calls: 0,
            subprog_calls: 0,
            inlined_lookups: 0,
        })
        .collect();
    count(&h, &paths, &mut out)?;
    for round in 0..plan.rounds {
        for (p, cost) in paths.iter().zip(&mut out) {
            let ifindex = h.nic(p.nic).0;
            let mut ns = [0.0; Contender::ALL.len()];
            for c in rotated(&Contender::ALL, round) {
                let i = Contender::ALL.iter().position(|x| *x == c).expect("a contender");
                ns[i] = match c {
                    Contender::EdgeFilter => measure_edge(&h, &p.frame, p.nic, p.verdict, plan.repeat, &p.name)?,
                    Contender::Floor => {
                        let (action, t) = run(floor.of(cost.drop), &p.frame, ifindex, plan.repeat)?;
                        ensure!(action == action_of(p.verdict), "floor returned {action} on {}", p.name);
                        t
                    }
                    Contender::XdpFilter(f) => {
                        let prog = if f == rivals::XdpFilterFeatures::Tcp { &xdp_tcp } else { &xdp_all };
                        let (action, t) = run(prog, &p.frame, ifindex, plan.repeat)?;
                        if round == 0 {
                            cost.rival_actions.push((c, action));
                        }
                        t
                    }
                };
            }
            let floor_ns = ns[1];
            for (i, (_, fig)) in cost.figures.iter_mut().enumerate() {
                fig.record(ns[i], floor_ns);
            }
        }
    }
    Ok(out)
}

/// Count what edge-filter's bytecode does on each path, once per run: the emulator
/// runs the frame against the harness's maps (the state the setup frames left), then
/// the kernel runs it once, and the two XDP actions must agree (else the emulator is
/// wrong, and the benchmark fails).
fn count(h: &Harness, paths: &[Path], out: &mut [PathCost]) -> anyhow::Result<()> {
    let program = h.filter.program_name();
    let mut emulator = Emulator::new(edge_filter::loader::OBJECT, program, h.filter.maps()).context("the instruction counter")?;
    for (p, cost) in paths.iter().zip(out) {
        let ifindex = h.nic(p.nic).0;
        // Each path on the kernel's state alone, not on what earlier paths wrote, with
        // the clock as it runs once measured.
        emulator.reset();
        emulator.steady_clock()?;
        let trace = emulator.run(&p.frame, ifindex).with_context(|| format!("{}: emulating {program}", p.name))?;
        let (action, _) = run(h.filter.program()?, &p.frame, ifindex, 1)?;
        ensure!(
            trace.action == action,
            "{}: the emulator returned XDP action {} where the kernel returned {action}: the emulator is wrong",
            p.name,
            trace.action
        );
        // `EDGE_FILTER_BENCH_PROFILE=DIR`: each path's executed instructions, by index
        // in the relocated program, to read beside `llvm-objdump -d -l` of the object.
        if let Some(dir) = std::env::var_os("EDGE_FILTER_BENCH_PROFILE") {
            let dir = std::path::PathBuf::from(dir);
            std::fs::create_dir_all(&dir)?;
            let text: String = trace.by_pc.iter().map(|(pc, n)| format!("{pc} {n}\n")).collect();
            std::fs::write(dir.join(p.name.replace([' ', '/'], "_")), text)?;
        }
        cost.insns = trace.insns;
        cost.helper_calls = trace.helper_calls;
        cost.subprog_calls = trace.subprog_calls;
        cost.inlined_lookups = trace.inlined_lookups;
    }
    Ok(())
}

/// One growth dimension at one size.
#[derive(Clone, Debug)]
pub struct GrowthPoint {
    /// `sets exact v4`, `sets prefixes v6`, `flows v4`, ...
    pub table: String,
    pub size: usize,
    pub path: String,
    /// Instructions and helper calls of the first frame of the figure's batch, as in
    /// [`PathCost`] (0 in records from before they were counted).
    pub insns: u64,
    pub helper_calls: u64,
    /// ns per packet, ratio to the floor of the same round.
    pub figure: Figure,
}

/// The `i`th of `n` addresses or prefixes of a growth set: exact addresses from
/// 198.18.0.0/15 and 2001:db8:1::/64; prefixes /31 from 198.18.0.0/15 and /64 from
/// 2001:db8:2::/48 (none overlap, none is a plan address). With it, an address inside
/// the entry.
fn growth_entry(i: usize, v4: bool, exact: bool) -> (Prefix, IpAddr) {
    let i = i as u32;
    let (addr, len, inside): (IpAddr, u8, IpAddr) = match (v4, exact) {
        (true, true) => {
            let a = Ipv4Addr::from(0xc612_0000 + i);
            (a.into(), 32, a.into())
        }
        (true, false) => {
            let a = 0xc612_0000 + 2 * i;
            (Ipv4Addr::from(a).into(), 31, Ipv4Addr::from(a + 1).into())
        }
        (false, true) => {
            let a = Ipv6Addr::from(0x2001_0db8_0001_0000_0000_0000_0000_0000_u128 + u128::from(i) + 1);
            (a.into(), 128, a.into())
        }
        (false, false) => {
            let a = 0x2001_0db8_0002_0000_0000_0000_0000_0000_u128 + (u128::from(i) << 64);
            (Ipv6Addr::from(a).into(), 64, Ipv6Addr::from(a + 0x20).into())
        }
    };
    (Prefix::new(addr, len).expect("a network address"), inside)
}

/// Address sets of `n` entries in access-edge, beside the plan's own.
fn growth_sets(n: usize, v4: bool, exact: bool) -> anyhow::Result<AddressSets> {
    let mut sets = sets();
    for i in 0..n {
        sets.insert(SetId::ACCESS_EDGE, growth_entry(i, v4, exact).0)?;
    }
    Ok(sets)
}

/// `KEYS` members of a set of `n`, spread over all of it.
fn spread(n: usize) -> impl Iterator<Item = usize> {
    let keys = KEYS.min(n);
    (0..keys).map(move |k| k * n / keys)
}

/// Mean cost over a batch of frames, each run `repeat / frames` times by `one`
/// (NIC, frame, repetitions -> ns per run).
fn batch(frames: &[(Nic, Vec<u8>)], repeat: u32, mut one: impl FnMut(Nic, &[u8], u32) -> anyhow::Result<f64>) -> anyhow::Result<f64> {
    let each = (repeat / frames.len() as u32).max(1);
    let mut total = 0.0;
    for (nic, f) in frames {
        total += one(*nic, f, each)?;
    }
    Ok(total / frames.len() as f64)
}

/// edge-filter's and the floor's cost over the same batch, edge-filter's verdicts
/// checked.
fn batch_with_floor(h: &Harness, floor: &Floor, frames: &[(Nic, Vec<u8>)], want: u32, repeat: u32, what: &str) -> anyhow::Result<(f64, f64)> {
    let ns = batch(frames, repeat, |nic, f, each| measure_edge(h, f, nic, want, each, what))?;
    let fl = batch(frames, repeat, |nic, f, each| Ok(run(floor.of(verdict::is_drop(want)), f, h.nic(nic).0, each)?.1))?;
    Ok((ns, fl))
}

/// Cost as the address sets grow: for each family and kind (exact, prefixes), the
/// drop/no_rule, drop/spoofed and pass/rule (R1 SYN) paths on members of the set.
pub fn set_growth(plan: &Plan) -> anyhow::Result<Vec<GrowthPoint>> {
    let mut h = Harness::new(Policy::default())?;
    let floor = Floor::load()?;
    let mut points: Vec<GrowthPoint> = Vec::new();
    let kinds = [(true, true), (false, true), (true, false), (false, false)];
    for round in 0..plan.rounds {
        for (v4, exact) in rotated(&kinds, round) {
            let table = format!("sets {} {}", if exact { "exact" } else { "prefixes" }, if v4 { "v4" } else { "v6" });
            for &n in plan.set_sizes {
                h.filter.maps_mut().set_address_sets(&growth_sets(n, v4, exact)?)?;
                h.reset_state()?;
                let partner = if v4 { PARTNER4 } else { PARTNER6 };
                let members: Vec<IpAddr> = spread(n).map(|i| growth_entry(i, v4, exact).1).collect();
                let cases: [(&str, u32, Frames); 3] = [
                    (
                        "drop/no_rule",
                        verdict::DROP_NO_RULE,
                        members.iter().map(|m| (Nic::Outside, tcp(partner, *m, 40000, 80, SYN).build())).collect(),
                    ),
                    (
                        "drop/spoofed",
                        verdict::DROP_SPOOFED,
                        members.iter().map(|m| (Nic::Outside, tcp(*m, partner, 5269, 40000, SYN).build())).collect(),
                    ),
                    (
                        "pass/rule R1 SYN",
                        verdict::PASS_RULE,
                        members.iter().map(|m| (Nic::Outside, tcp(partner, *m, 40000, 5269, SYN).build())).collect(),
                    ),
                ];
                for (path, want, frames) in cases {
                    let what = format!("{table} {n} {path}");
                    let at = point(&mut points, &h, &table, n, path, &frames)?;
                    let (ns, fl) = batch_with_floor(&h, &floor, &frames, want, plan.repeat, &what)?;
                    points[at].figure.record(ns, fl);
                }
            }
        }
    }
    Ok(points)
}

/// The index of the point (`table`, `size`, `path`) in `points`, made the first time:
/// then the emulator also counts what the program does on the batch's first frame,
/// against the maps as they are before the batch runs.
fn point(points: &mut Vec<GrowthPoint>, h: &Harness, table: &str, size: usize, path: &str, frames: &Frames) -> anyhow::Result<usize> {
    if let Some(i) = points.iter().position(|p| p.table == table && p.size == size && p.path == path) {
        return Ok(i);
    }
    let (nic, frame) = frames.first().context("a batch of frames")?;
    let program = h.filter.program_name();
    let mut emulator = Emulator::new(edge_filter::loader::OBJECT, program, h.filter.maps()).context("the instruction counter")?;
    emulator.steady_clock()?;
    let trace = emulator.run(frame, h.nic(*nic).0).with_context(|| format!("{table} {size} {path}: emulating {program}"))?;
    points.push(GrowthPoint {
        table: table.into(),
        size,
        path: path.into(),
        insns: trace.insns,
        helper_calls: trace.helper_calls,
        figure: Figure::default(),
    });
    Ok(points.len() - 1)
}

/// Row counts of the rule-table growth axis: the built-in table, a whole Edge's
/// worth, and the most the table holds.
pub const ROW_SIZES: [usize; 3] = [3, 16, 64];

/// The built-in table and `n - 3` rows of the operator's beside it (TCP and UDP in
/// turn, each to its own port on access-edge), for the rule-table growth axis.
fn growth_rules(n: usize) -> anyhow::Result<Policy> {
    use edge_filter::rules::{RowSpec, TableSpec};
    let mut spec = TableSpec::default();
    for i in 0..n.saturating_sub(3) {
        spec.rows.push(RowSpec {
            id: format!("growth-{i}"),
            proto: if i % 2 == 0 { edge_filter::Proto::Tcp } else { edge_filter::Proto::Udp },
            ports: edge_filter::rules::PortRange::single(10_000 + i as u16)?,
            source: "any".into(),
            destination: "access-edge".into(),
        });
    }
    Ok(Policy { rules: edge_filter::RuleTable::build(&spec, &sets())?, ..Policy::default() })
}

/// Cost as the rule table grows from 3 to 64 rows: the paths every packet of a
/// federation connection takes (pass/rule, pass/reply) and the drops a refused one
/// meets, on the same frames at every size.
pub fn rule_growth(plan: &Plan) -> anyhow::Result<Vec<GrowthPoint>> {
    let mut h = Harness::new(Policy::default())?;
    let floor = Floor::load()?;
    let mut points = Vec::new();
    for round in 0..plan.rounds {
        for n in rotated(&ROW_SIZES, round) {
            h.filter.maps_mut().set_policy(&growth_rules(n)?)?;
            h.reset_state()?;
            let now = edge_filter::report::monotonic_ns();
            let flows: Vec<(Ipv4Addr, u16)> = (0..KEYS).map(growth_source).collect();
            h.filter.maps_mut().insert_flows(flows.iter().map(|(src, sport)| established_r1(*src, *sport, now)))?;
            let cases: [(&str, u32, Frames); 4] = [
                (
                    "pass/rule R1",
                    verdict::PASS_RULE,
                    flows
                        .iter()
                        .map(|(s, p)| (Nic::Outside, tcp((*s).into(), ACCESS4, *p, 5269, ACK | PSH).seq_ack(1001, 5001).payload(100).build()))
                        .collect(),
                ),
                (
                    "pass/reply",
                    verdict::PASS_REPLY,
                    flows
                        .iter()
                        .map(|(s, p)| (Nic::Edge, tcp(ACCESS4, (*s).into(), 5269, *p, ACK | PSH).seq_ack(5001, 1101).payload(100).build()))
                        .collect(),
                ),
                (
                    "drop/no_rule",
                    verdict::DROP_NO_RULE,
                    flows.iter().map(|(s, p)| (Nic::Outside, tcp((*s).into(), ACCESS4, *p, 22, SYN).build())).collect(),
                ),
                (
                    "drop/spoofed",
                    verdict::DROP_SPOOFED,
                    flows.iter().map(|(s, p)| (Nic::Outside, tcp(ACCESS4, (*s).into(), 5269, *p, SYN).build())).collect(),
                ),
            ];
            for (path, want, frames) in cases {
                let what = format!("rules {n} {path}");
                let at = point(&mut points, &h, "rules", n, path, &frames)?;
                let (ns, fl) = batch_with_floor(&h, &floor, &frames, want, plan.repeat, &what)?;
                points[at].figure.record(ns, fl);
            }
        }
    }
    Ok(points)
}

/// An established R1 flow from `src`:`sport` to access-edge (203.0.113.10):5269, as
/// if its handshake had completed here, with the sequence numbers of [`on_flow`]'s
/// handshake. What the benchmarks fill the flow table with.
pub fn established_r1(src: Ipv4Addr, sport: u16, now_ns: u64) -> (FlowKey, Flow) {
    let mut key =
        FlowKey { src: [0; 16], dst: [0; 16], sport_be: sport.to_be(), dport_be: 5269u16.to_be(), family: family::V4, proto: 6, _pad: [0; 2] };
    key.src[..4].copy_from_slice(&src.octets());
    let IpAddr::V4(access) = ACCESS4 else { unreachable!("ACCESS4 is IPv4") };
    key.dst[..4].copy_from_slice(&access.octets());
    let flow = Flow {
        created_ns: now_ns,
        last_seen_ns: now_ns,
        state: flow_state::ESTABLISHED,
        rule: R1 as u8,
        reply_roles: role::bit(role::EDGE),
        ifindex: 0,
        origin: edge_filter_common::origin::OPENED,
        opener: TcpDir { end: 1001, maxend: 5001 + 65_535, maxwin: 65_535, ack: 5001, ..TcpDir::default() },
        responder: TcpDir { end: 5001, maxend: 1001 + 65_535, maxwin: 65_535, ack: 1001, ..TcpDir::default() },
    };
    (key, flow)
}

/// The source of the `i`th flow of a filled table: the address (from 198.18.0.0/15)
/// and port vary.
fn growth_source(i: usize) -> (Ipv4Addr, u16) {
    (Ipv4Addr::from(0xc612_0000 + (i >> 14) as u32), 1024 + (i & 0x3fff) as u16)
}

/// Cost as the flow table grows (IPv4): pass/rule and pass/reply on flows spread
/// over the table, and drop/no_rule for a reply-like packet (from 5269) that misses it.
pub fn flow_growth(plan: &Plan) -> anyhow::Result<Vec<GrowthPoint>> {
    let biggest = plan.flow_sizes.iter().copied().max().unwrap_or(1);
    // Room to spare: an LRU table starts evicting before it is full.
    let opts = LoadOptions { max_flows: (biggest * 2).next_power_of_two() as u32, ..LoadOptions::default() };
    let mut h = Harness::build(Policy::default(), &sets(), opts)?;
    let floor = Floor::load()?;
    let mut points = Vec::new();
    for _ in 0..plan.rounds {
        h.reset_state()?;
        let mut filled = 0;
        for &n in plan.flow_sizes {
            // Timestamps from now, so no flow expires while measured.
            let now = edge_filter::report::monotonic_ns();
            h.filter.maps_mut().insert_flows((filled..n).map(|i| {
                let (src, sport) = growth_source(i);
                established_r1(src, sport, now)
            }))?;
            filled = n;
            let flows: Vec<(IpAddr, u16)> = spread(n)
                .map(|i| {
                    let (src, sport) = growth_source(i);
                    (src.into(), sport)
                })
                .collect();
            let cases: [(&str, u32, Frames); 3] = [
                (
                    "pass/rule R1",
                    verdict::PASS_RULE,
                    flows
                        .iter()
                        .map(|(s, p)| (Nic::Outside, tcp(*s, ACCESS4, *p, 5269, ACK | PSH).seq_ack(1001, 5001).payload(100).build()))
                        .collect(),
                ),
                (
                    "pass/reply",
                    verdict::PASS_REPLY,
                    flows.iter().map(|(s, p)| (Nic::Edge, tcp(ACCESS4, *s, 5269, *p, ACK | PSH).seq_ack(5001, 1101).payload(100).build())).collect(),
                ),
                (
                    // From 5269 like a reply, of no flow: a lookup that misses the table.
                    "drop/no_rule from 5269",
                    verdict::DROP_NO_RULE,
                    flows.iter().map(|(s, p)| (Nic::Outside, tcp(*s, ACCESS4, 5269, *p, ACK).build())).collect(),
                ),
            ];
            for (path, want, frames) in cases {
                let what = format!("flows {n} {path}");
                let at = point(&mut points, &h, "flows v4", n, path, &frames)?;
                let (ns, fl) = batch_with_floor(&h, &floor, &frames, want, plan.repeat, &what)?;
                points[at].figure.record(ns, fl);
            }
        }
    }
    h.reset_state()?;
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_entries_are_distinct_and_disjoint_from_the_plan() {
        for (v4, exact) in [(true, true), (false, true), (true, false), (false, false)] {
            let sets = growth_sets(4_096, v4, exact).unwrap();
            assert_eq!(sets.len(), edge_filter_tests::plan::sets().len() + 4_096);
            // The largest set's last entries: valid, distinct, outside the plan's.
            let mut top = AddressSets::default();
            for i in 65_536 - 4_096..65_536 {
                let (p, inside) = growth_entry(i, v4, exact);
                assert!(p.contains(inside));
                top.insert(SetId::ACCESS_EDGE, p).unwrap();
                assert_eq!(edge_filter_tests::plan::sets().lookup(inside), 0);
            }
            assert_eq!(top.len(), 4_096);
        }
        assert_eq!(spread(65_536).count(), KEYS);
        assert_eq!(spread(1).collect::<Vec<_>>(), vec![0]);
    }
}
