//! The differential run: generated frames through the real XDP program
//! (BPF_PROG_TEST_RUN) and through the reference model ([`crate::model`]), verdict
//! by verdict.
//!
//! Policies are named, and a name fixes both the policy and the address sets it is
//! loaded with, so that a fixture, which stores only the name, replays exactly:
//! - `default`, `strict`, `dry-run`: the built-in XMPP federation table on the test
//!   plan's sets ([`crate::plan::sets`]), enforcing / with unpoliced traffic dropped
//!   and fragments passed / in dry-run;
//! - `whole-edge`: the vendor's `lync-edge-external` and `lync-edge-internal` tables
//!   plus one operator row from a peer set, on the plan's sets with web conferencing
//!   and A/V addresses beside them (a single-IP Edge: some shared with access-edge);
//! - `random-<n>`: a rule table and address sets drawn from the seed `n`
//!   ([`random_policy`]).
//!
//! A run ([`run`], [`schedule`]) compares `packets` frames of the vendor-table
//! policies (`whole-edge` gets half of them, the other three a sixth each) and
//! `packets` frames of random ones: one policy per 2,500 frames, at least one, at most
//! 32, named `random-<seed * 1000 + i>`. Each policy gets a freshly loaded kernel
//! object, a fresh model and its own generator (seeded from the run's seed and the
//! policy's name) fed with the policy's rows and sets. Timeouts are longer than any
//! run and the state tables far larger than its traffic (checked after each policy),
//! as the model knows neither timeouts nor LRU eviction.
//!
//! A disagreement is reported with the frame in hex, the NIC, the policy and both
//! verdicts, and reduced to a minimal reproducer: the frame alone on fresh state
//! (bytes cut from the end and zeroed while the two still disagree) when it does not
//! depend on earlier frames, else the shortest sequence of earlier frames found that
//! still leads to it. The reproducer is written as a fixture (`tests/fixtures/*.case`)
//! that `tests/tests/fixtures.rs` replays with the model's verdicts as the expectation.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use edge_filter::{
    AddressSets, Fate, LoadOptions, Policy, Prefix, RuleTable, SetId, Timeouts,
    rules::{PortRange, Proto, RowSpec, TableSpec},
};
use edge_filter_common::{MAX_SETS, verdict};
use rand::{Rng, SeedableRng, rngs::SmallRng, seq::IndexedRandom};

use crate::{Harness, Nic, generator::Generator, model::Model, plan};

pub use edge_filter::report::verdict_name;

/// The vendor-table policies and their shares of the vendor group's frames.
pub const VENDOR: [(&str, u64); 4] = [("default", 1), ("strict", 1), ("dry-run", 1), ("whole-edge", 3)];

/// Random policies per frames of the random group, and their bounds.
const FRAMES_PER_RANDOM_POLICY: u64 = 2_500;
const MAX_RANDOM_POLICIES: u64 = 32;

/// State table sizes of the run: far above what a policy's frames can fill (checked
/// after each policy), so LRU eviction never enters the comparison.
const TABLE_SIZE: u32 = 1 << 16;

/// Policy and address sets by name (see the module documentation).
pub fn policy(name: &str) -> anyhow::Result<(Policy, AddressSets)> {
    // Timeouts longer than any run: the model does not age connections.
    let long = Duration::from_secs(30 * 24 * 3600);
    let timeouts = Timeouts { syn: long, established: long, closing: long, udp: long };
    let base = Policy { timeouts, ..Policy::default() };
    Ok(match name {
        "default" => (base, plan::sets()),
        "strict" => (Policy { unpoliced: Fate::Drop, fragments: Fate::Pass, ..base }, plan::sets()),
        "dry-run" => (Policy { dry_run: true, unpoliced: Fate::Drop, ..base }, plan::sets()),
        "whole-edge" => {
            let sets = whole_edge_sets();
            let spec = TableSpec {
                tables: vec!["lync-edge-external".into(), "lync-edge-internal".into()],
                rows: vec![RowSpec {
                    id: "partners-alt".into(),
                    proto: Proto::Tcp,
                    ports: PortRange::single(5270)?,
                    source: "partners".into(),
                    destination: "access-edge".into(),
                }],
                ..TableSpec::default()
            };
            (Policy { rules: RuleTable::build(&spec, &sets)?, ..base }, sets)
        }
        other => match other.strip_prefix("random-").map(str::parse::<u64>) {
            Some(Ok(n)) => {
                let (mut policy, sets) = random_policy(n)?;
                policy.timeouts = timeouts;
                (policy, sets)
            }
            _ => bail!("unknown fuzz policy `{other}` (default, strict, dry-run, whole-edge, random-<n>)"),
        },
    })
}

/// The plan's sets, with web conferencing and A/V addresses (the single-IP Edge's
/// address 203.0.113.10 in all three external sets) and a peer set of partners.
fn whole_edge_sets() -> AddressSets {
    let mut s = plan::sets();
    let partners = s.add_peer("partners").expect("a fresh peer set");
    plan::insert_prefixes(&mut s, SetId::WEBCONF_EDGE, &["203.0.113.10", "203.0.113.11", "2001:db8:203::11"]);
    plan::insert_prefixes(&mut s, SetId::AV_EDGE, &["203.0.113.10", "203.0.113.12", "2001:db8:203::10", "2001:db8:203::12"]);
    plan::insert_prefixes(&mut s, partners, &["198.51.100.20", "198.51.100.128/25", "2001:db8:5100::20"]);
    s
}

/// Addresses random sets are drawn from: edge candidates (the perimeter's
/// 203.0.113.0/24 and 192.0.2.0/24) and peer candidates (the partners' and the
/// corporate network's ranges), each family with a few prefixes, nested in places.
const EDGE_CANDIDATES: [&str; 16] = [
    "203.0.113.0/24",
    "2001:db8:203::/48",
    "203.0.113.10",
    "203.0.113.11",
    "203.0.113.12",
    "203.0.113.70",
    "203.0.113.64/26",
    "192.0.2.10",
    "192.0.2.11",
    "192.0.2.128/28",
    "2001:db8:203::10",
    "2001:db8:203::11",
    "2001:db8:203:1::70",
    "2001:db8:203:1::/64",
    "2001:db8:192::10",
    "2001:db8:192:1::/120",
];
const PEER_CANDIDATES: [&str; 13] = [
    "0.0.0.0/0",
    "198.18.0.0/15",
    "2001:db8::/32",
    "2001:db8:5100::/48",
    "198.51.100.20",
    "198.51.100.21",
    "198.51.100.128/25",
    "198.51.100.130",
    "198.18.0.20",
    "198.18.0.0/24",
    "2001:db8:5100::20",
    "2001:db8:5100:1::/64",
    "2001:db8:198::20",
];
/// Ports random rows are drawn around: the vendor's, a few of other services, the
/// ends of the port space.
const PORT_POOL: [u16; 14] = [53, 80, 443, 3478, 4443, 5061, 5062, 5269, 8057, 23456, 50000, 59999, 1, 65535];

/// A random rule table over random sets, drawn from `n`: 1-64 rows of either
/// protocol, each a single port or a range around a small pool of ports (so that
/// generated traffic hits them often), from and to any, an edge set or a peer set,
/// with an edge set on at least one side; edge sets that share addresses and prefixes,
/// 0-12 peer sets (from single hosts to 0.0.0.0/0), now and then overlapping an edge
/// set; and random settings.
pub fn random_policy(n: u64) -> anyhow::Result<(Policy, AddressSets)> {
    let mut rng = SmallRng::seed_from_u64(n);
    let mut sets = AddressSets::default();
    let candidate = |s: &str| s.parse::<Prefix>().expect("a candidate prefix");
    for set in SetId::EDGE {
        if rng.random_ratio(1, 8) {
            continue; // An empty set: its rows match nothing.
        }
        for _ in 0..rng.random_range(1..=4) {
            sets.insert(set, candidate(EDGE_CANDIDATES.choose(&mut rng).expect("non-empty")))?;
        }
    }
    let mut peers = Vec::new();
    // Mostly a few peer sets; now and then enough that set indices reach the high
    // byte of the set mask (the kernel matches each byte of it separately).
    let max_peers = if rng.random_ratio(1, 3) { MAX_SETS as usize - SetId::EDGE.len() } else { 3 };
    for i in 0..rng.random_range(0..=max_peers) {
        let peer = sets.add_peer(&format!("peer-{i}"))?;
        for _ in 0..rng.random_range(1..=3) {
            let pool: &[&str] = if rng.random_ratio(1, 8) { &EDGE_CANDIDATES } else { &PEER_CANDIDATES };
            sets.insert(peer, candidate(pool.choose(&mut rng).expect("non-empty")))?;
        }
        peers.push(sets.name(peer).to_owned());
    }
    let mut ports: Vec<u16> = PORT_POOL.choose_multiple(&mut rng, 5).copied().collect();
    ports.push(rng.random_range(1024..=65535));
    let edge_names: Vec<&str> = SetId::EDGE.iter().map(|s| s.edge_name().expect("an edge set")).collect();
    let mut rows = Vec::new();
    for i in 0..rng.random_range(1..=64) {
        let base = *ports.choose(&mut rng).expect("non-empty");
        let range = match rng.random_range(0..10) {
            0..6 => PortRange::single(base)?,
            6..9 => {
                let lo = base.saturating_sub(rng.random_range(0..20)).max(1);
                PortRange::new(lo, base.saturating_add(rng.random_range(0..50)))?
            }
            _ => PortRange::new(base, base.saturating_add(rng.random_range(0..10_000)))?,
        };
        let edge = edge_names.choose(&mut rng).expect("non-empty").to_string();
        let other = match rng.random_range(0..10) {
            0..4 => "any".to_owned(),
            4..7 => edge_names.choose(&mut rng).expect("non-empty").to_string(),
            _ => peers.choose(&mut rng).cloned().unwrap_or_else(|| "any".to_owned()),
        };
        let (source, destination) = if rng.random_bool(0.5) { (edge, other) } else { (other, edge) };
        rows.push(RowSpec {
            id: format!("r{i}"),
            proto: if rng.random_bool(0.6) { Proto::Tcp } else { Proto::Udp },
            ports: range,
            source,
            destination,
        });
    }
    let spec = TableSpec { tables: Vec::new(), rows, ..TableSpec::default() };
    let policy = Policy {
        rules: RuleTable::build(&spec, &sets).context("a random table")?,
        unpoliced: if rng.random_ratio(1, 4) { Fate::Drop } else { Fate::Pass },
        fragments: if rng.random_ratio(1, 4) { Fate::Pass } else { Fate::Drop },
        dry_run: rng.random_ratio(1, 8),
        host_link_local: if rng.random_ratio(1, 4) { edge_filter::LinkScope::Pass } else { edge_filter::LinkScope::Police },
        pickup: rng.random_ratio(3, 4),
        host_dhcp: rng.random_ratio(1, 3),
        ..Policy::default()
    };
    Ok((policy, sets))
}

fn role(nic: Nic) -> Option<edge_filter::Role> {
    nic.role()
}

fn hex(frame: &[u8]) -> String {
    frame.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(s: &str) -> anyhow::Result<Vec<u8>> {
    if !s.is_ascii() || !s.len().is_multiple_of(2) {
        bail!("not an even number of hex digits");
    }
    Ok((0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16)).collect::<Result<_, _>>()?)
}

/// The kernel's verdict: the one counter of the NIC that moved.
pub fn kernel_verdict(h: &Harness, frame: &[u8], nic: Nic) -> anyhow::Result<u32> {
    let (ifindex, slot) = h.prepare(nic)?;
    let before = h.filter.maps().slot_counters(slot)?;
    h.send(frame, ifindex)?;
    let after = h.filter.maps().slot_counters(slot)?;
    let moved: Vec<u32> = (0..verdict::SLOTS).filter(|v| after[*v as usize].packets != before[*v as usize].packets).collect();
    match moved[..] {
        [v] => Ok(v),
        _ => bail!("{} counters moved for one frame: {moved:?}", moved.len()),
    }
}

/// The row slot whose hit counter a frame moves on a fresh load of `policy` (rows sit
/// in slots in table order), if it opens a row. The kernel counts the lowest slot of
/// the rows a packet opens, and whether a packet opens a row depends on the packet
/// alone, not on state: so the slot is the shortest prefix of the table under which
/// the model says `pass/rule`.
pub fn expected_rule(policy: &Policy, sets: &AddressSets, frame: &[u8], nic: Nic) -> Option<u32> {
    let rows = policy.rules.rows();
    (0..rows.len())
        .find(|&i| {
            let prefix = Policy { rules: RuleTable::from_rows(rows[..=i].to_vec()), ..policy.clone() };
            Model::new(sets.clone(), prefix).judge(frame, role(nic)) == verdict::PASS_RULE
        })
        .map(|i| i as u32)
}

/// One frame of a reproducer: the NIC it arrives on and its bytes.
pub type Step = (Nic, Vec<u8>);

/// A disagreement.
#[derive(Debug)]
pub struct Disagreement {
    pub seed: u64,
    /// Index of the frame within its policy's run.
    pub index: u64,
    pub policy: String,
    pub nic: Nic,
    pub frame: Vec<u8>,
    pub kernel: u32,
    pub model: u32,
    /// What the generator meant the frame to be.
    pub what: String,
    /// Frames that, sent in order on fresh state, end in a disagreement (the last one
    /// disagrees, none before it does), if the reduction found them: the frame alone,
    /// reduced, when the disagreement does not depend on earlier frames.
    pub minimal: Option<Vec<Step>>,
    /// Where the reproducer was written.
    pub fixture: Option<PathBuf>,
}

impl std::fmt::Display for Disagreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "disagreement at frame {} of policy {} (seed {}, {}, NIC {:?}):", self.index, self.policy, self.seed, self.what, self.nic)?;
        writeln!(f, "  kernel {}, model {}", verdict_name(self.kernel), verdict_name(self.model))?;
        writeln!(f, "  frame {}", hex(&self.frame))?;
        match self.minimal.as_deref() {
            Some([(nic, frame)]) => write!(f, "  minimal reproducer (fresh state, NIC {nic:?}) {}", hex(frame))?,
            Some(steps) => {
                write!(f, "  minimal reproducer: {} frames on fresh state:", steps.len())?;
                for (nic, frame) in steps {
                    write!(f, "\n    {nic:?} {}", hex(frame))?;
                }
            }
            None => write!(f, "  no reproducer found on fresh state")?,
        }
        if let Some(p) = &self.fixture {
            write!(f, "\n  fixture {}", p.display())?;
        }
        Ok(())
    }
}

/// Whether the frames, replayed in order on fresh state, end in a disagreement: the
/// last one disagrees and none before it does.
fn ends_in_disagreement(h: &mut Harness, policy: &Policy, sets: &AddressSets, steps: &[Step]) -> anyhow::Result<bool> {
    h.reset_state()?;
    let mut m = Model::new(sets.clone(), policy.clone());
    for (i, (nic, frame)) in steps.iter().enumerate() {
        let differs = kernel_verdict(h, frame, *nic)? != m.judge(frame, role(*nic));
        if differs || i + 1 == steps.len() {
            return Ok(differs && i + 1 == steps.len());
        }
    }
    Ok(false)
}

/// A reproducer of a disagreement at the last of `history`: the frame alone, cut and
/// zeroed while it still disagrees, if it disagrees on fresh state; else the shortest
/// run of earlier frames found (a suffix of the history, then chunks of it removed)
/// that still leads to it.
fn reduce(h: &mut Harness, policy: &Policy, sets: &AddressSets, history: &[Step]) -> anyhow::Result<Option<Vec<Step>>> {
    let (nic, frame) = history.last().expect("the disagreeing frame").clone();
    let fresh = |h: &mut Harness, f: &[u8]| ends_in_disagreement(h, policy, sets, &[(nic, f.to_vec())]);
    if fresh(h, &frame)? {
        let mut best = frame;
        while best.len() > 14 && fresh(h, &best[..best.len() - 1])? {
            best.truncate(best.len() - 1);
        }
        for i in 14..best.len() {
            if best[i] != 0 {
                let mut zeroed = best.clone();
                zeroed[i] = 0;
                if fresh(h, &zeroed)? {
                    best = zeroed;
                }
            }
        }
        return Ok(Some(vec![(nic, best)]));
    }
    // The shortest suffix, by doubling, that still leads there.
    let mut n = 16;
    let mut steps = loop {
        let suffix = &history[history.len().saturating_sub(n)..];
        if ends_in_disagreement(h, policy, sets, suffix)? {
            break suffix.to_vec();
        }
        if n >= history.len() {
            return Ok(None);
        }
        n *= 2;
    };
    // Then remove chunks of earlier frames, halving the chunk, while it still does.
    let mut chunk = (steps.len() / 2).max(1);
    loop {
        let mut at = 0;
        while at + 1 < steps.len() {
            let end = (at + chunk).min(steps.len() - 1);
            let candidate: Vec<Step> = steps[..at].iter().chain(&steps[end..]).cloned().collect();
            if ends_in_disagreement(h, policy, sets, &candidate)? {
                steps = candidate;
            } else {
                at = end;
            }
        }
        if chunk == 1 {
            break;
        }
        chunk /= 2;
    }
    Ok(Some(steps))
}

/// What a policy's run compared: frames per verdict.
#[derive(Debug, Default)]
pub struct Tally {
    pub frames: u64,
    pub by_verdict: std::collections::BTreeMap<String, u64>,
    /// Frames per kind the generator meant (mutated ones apart) and verdict: what the
    /// run covered.
    pub by_kind: std::collections::BTreeMap<(String, String), u64>,
}

impl Tally {
    fn add(&mut self, kind: &str, verdict: u32) {
        self.frames += 1;
        *self.by_verdict.entry(verdict_name(verdict)).or_default() += 1;
        *self.by_kind.entry((kind.to_owned(), verdict_name(verdict))).or_default() += 1;
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.by_verdict.iter().map(|(v, n)| format!("{v} {n}")).collect();
        write!(f, "{}", parts.join(", "))
    }
}

/// The two groups a run compares frames of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    Vendor,
    Random,
}

/// One policy's part of a run.
#[derive(Debug)]
pub struct PolicyRun {
    pub name: String,
    pub group: Group,
    /// Frames compared (and agreed on).
    pub tally: Tally,
    /// The model's tables at the end: flows, handshakes, UDP flows.
    pub tables: (usize, usize, usize),
    /// Rows of the policy's table.
    pub rows: usize,
    pub disagreement: Option<Box<Disagreement>>,
}

/// What a run is asked to do.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub seed: u64,
    /// Frames per group: the vendor-table policies, and the random ones.
    pub packets: u64,
    /// Where reproducers are written.
    pub fixtures: Option<PathBuf>,
    /// Go on with the next policy after a disagreement (the policy that disagreed
    /// stops: its two states may have parted).
    pub keep_going: bool,
}

/// The policies of a run with their frames: the vendor group, then the random group.
pub fn schedule(seed: u64, packets: u64) -> Vec<(String, Group, u64)> {
    let mut out = Vec::new();
    let total: u64 = VENDOR.iter().map(|(_, w)| w).sum();
    let mut left = packets;
    for (i, (name, weight)) in VENDOR.iter().enumerate() {
        let n = if i + 1 == VENDOR.len() { left } else { packets * weight / total };
        left -= n;
        out.push((name.to_string(), Group::Vendor, n));
    }
    let k = (packets / FRAMES_PER_RANDOM_POLICY).clamp(1, MAX_RANDOM_POLICIES);
    for i in 0..k {
        // Distinct seeds give distinct policies; the name replays one alone.
        let n = seed.wrapping_mul(1_000).wrapping_add(i);
        out.push((format!("random-{n}"), Group::Random, packets / k + u64::from(i < packets % k)));
    }
    out
}

/// The generator's seed for a policy of a run: the run's seed and the policy's name.
fn generator_seed(seed: u64, name: &str) -> u64 {
    name.bytes().fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Run every policy of [`schedule`] in turn, calling `progress` after each. Stops at
/// the first disagreement unless `keep_going`.
pub fn run(opts: &RunOptions, progress: &mut dyn FnMut(&PolicyRun)) -> anyhow::Result<Vec<PolicyRun>> {
    let mut runs = Vec::new();
    for (name, group, frames) in schedule(opts.seed, opts.packets) {
        let r = run_policy(opts, &name, group, frames).with_context(|| format!("policy {name}"))?;
        progress(&r);
        let stop = r.disagreement.is_some() && !opts.keep_going;
        runs.push(r);
        if stop {
            break;
        }
    }
    Ok(runs)
}

fn run_policy(opts: &RunOptions, name: &str, group: Group, frames: u64) -> anyhow::Result<PolicyRun> {
    let (policy, sets) = policy(name)?;
    let load = LoadOptions { max_flows: TABLE_SIZE, max_embryos: TABLE_SIZE, max_udp_flows: TABLE_SIZE, ..LoadOptions::default() };
    let mut h = Harness::build(policy.clone(), &sets, load).context("load the filter")?;
    let mut model = Model::new(sets.clone(), policy.clone());
    let mut generator = Generator::new(generator_seed(opts.seed, name), &policy, &sets);
    let mut tally = Tally::default();
    let mut history: Vec<Step> = Vec::new();
    let mut disagreement = None;
    for index in 0..frames {
        let s = generator.sample();
        let kernel = kernel_verdict(&h, &s.frame, s.nic).with_context(|| format!("frame {index}: {}", hex(&s.frame)))?;
        let expected = model.judge(&s.frame, role(s.nic));
        history.push((s.nic, s.frame.clone()));
        if kernel != expected {
            let minimal = reduce(&mut h, &policy, &sets, &history)?;
            let mut d = Disagreement {
                seed: opts.seed,
                index,
                policy: name.to_owned(),
                nic: s.nic,
                frame: s.frame,
                kernel,
                model: expected,
                what: if s.mutated { format!("mutated {}", s.what) } else { s.what.to_owned() },
                minimal,
                fixture: None,
            };
            if let (Some(dir), Some(steps)) = (&opts.fixtures, &d.minimal) {
                d.fixture = Some(write_fixture(dir, &d, steps)?);
            }
            disagreement = Some(Box::new(d));
            break;
        }
        tally.add(if s.mutated { "mutated" } else { s.what }, expected);
    }
    let tables = model.table_sizes();
    // The comparison assumes tables that never fill: say so when the traffic came near.
    if [tables.0, tables.1, tables.2].iter().any(|n| *n as u64 > u64::from(TABLE_SIZE) / 2) {
        bail!("the model holds {tables:?} flows, handshakes and UDP flows: the generator's tuple pool outgrew the tables ({TABLE_SIZE})");
    }
    Ok(PolicyRun { name: name.to_owned(), group, tally, tables, rows: policy.rules.rows().len(), disagreement })
}

/// FNV-1a of the steps: a fixture's name that two reproducers do not share.
fn digest(steps: &[Step]) -> u64 {
    steps
        .iter()
        .flat_map(|(nic, f)| format!("{nic:?}").into_bytes().into_iter().chain(f.iter().copied()))
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

fn nic_name(nic: Nic) -> String {
    format!("{nic:?}")
}

fn parse_nic(s: &str) -> Option<Nic> {
    Nic::ALL.into_iter().find(|n| nic_name(*n) == s)
}

/// A fixture: the policy, the frames before (with the model's verdicts), and the
/// frame that disagreed with the model's verdict for it.
fn write_fixture(dir: &Path, d: &Disagreement, steps: &[Step]) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let (policy, sets) = policy(&d.policy)?;
    let mut m = Model::new(sets, policy);
    let mut text = format!(
        "# Found by the differential run (seed {}, policy {}, frame {}, {}), reduced: kernel {}, model {}.\n\
         # Expected: the model's verdicts.\npolicy {}\n",
        d.seed,
        d.policy,
        d.index,
        d.what,
        verdict_name(d.kernel),
        verdict_name(d.model),
        d.policy
    );
    let (last, before) = steps.split_last().expect("at least the frame");
    for (nic, frame) in before {
        let v = m.judge(frame, role(*nic));
        let _ = writeln!(text, "step {} {} {}", nic_name(*nic), verdict_name(v), hex(frame));
    }
    let v = m.judge(&last.1, role(last.0));
    let _ = write!(text, "nic {}\nverdict {}\nframe {}\n", nic_name(last.0), verdict_name(v), hex(&last.1));
    let name = format!("{}-{}-{:016x}.case", d.policy, nic_name(last.0), digest(steps)).to_lowercase();
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

/// A fixture read back.
pub struct Fixture {
    pub policy: String,
    /// Frames sent first, in order, each with its expected verdict.
    pub steps: Vec<(Nic, u32, Vec<u8>)>,
    pub nic: Nic,
    pub verdict: u32,
    pub frame: Vec<u8>,
}

/// Read a fixture file: `policy NAME`, any number of `step NIC VERDICT HEX` lines,
/// then `nic NIC`, `verdict VERDICT` and `frame HEX` (`#` starts a comment line).
pub fn read_fixture(path: &Path) -> anyhow::Result<Fixture> {
    let text = std::fs::read_to_string(path)?;
    let at = |what: &str| format!("{}: {what}", path.display());
    let verdict_of = |name: &str| (0..verdict::SLOTS).find(|v| verdict_name(*v) == name).with_context(|| at(&format!("unknown verdict {name}")));
    let nic_of = |name: &str| parse_nic(name).with_context(|| at(&format!("unknown NIC {name}")));
    let mut fields = std::collections::HashMap::new();
    let mut steps = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (k, v) = line.split_once(' ').with_context(|| at(&format!("`{line}`")))?;
        if k == "step" {
            let parts: Vec<&str> = v.split_whitespace().collect();
            let [nic, verdict, frame] = parts[..] else { bail!(at(&format!("`{line}`: step NIC VERDICT HEX"))) };
            steps.push((nic_of(nic)?, verdict_of(verdict)?, unhex(frame).with_context(|| at(line))?));
        } else {
            fields.insert(k, v.trim());
        }
    }
    let get = |k: &str| fields.get(k).copied().with_context(|| at(&format!("no `{k}`")));
    Ok(Fixture {
        policy: get("policy")?.to_owned(),
        steps,
        nic: nic_of(get("nic")?)?,
        verdict: verdict_of(get("verdict")?)?,
        frame: unhex(get("frame")?).with_context(|| at("frame"))?,
    })
}
