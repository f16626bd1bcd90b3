//! The differential run: generated frames through the real XDP program
//! (BPF_PROG_TEST_RUN) and through the reference model (`edge_filter::model`), verdict
//! by verdict, until the first disagreement.
//!
//! A disagreement is reported with the frame in hex, the NIC, the policy and both
//! verdicts, and reduced to a minimal reproducer when it does not depend on earlier
//! packets: bytes are cut from the end and zeroed while the two still disagree. The
//! reproducer is written as a fixture (`tests/fixtures/*.case`) that
//! `tests/tests/fixtures.rs` replays with the model's verdict as the expectation.

use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::{Context as _, bail};
use edge_filter::{Fate, Policy, Timeouts, model::Model};
use edge_filter_common::verdict;

use crate::{Harness, Nic, generator::Generator, plan};

/// The policies a run cycles through, by name (fixtures name theirs).
pub fn policy(name: &str) -> anyhow::Result<Policy> {
    // Timeouts longer than any run: the model does not age connections.
    let long = Duration::from_secs(30 * 24 * 3600);
    let base = Policy { timeouts: Timeouts { syn: long, established: long, closing: long, udp: long }, ..Policy::default() };
    Ok(match name {
        "default" => base,
        "strict" => Policy { unpoliced: Fate::Drop, fragments: Fate::Pass, ..base },
        "dry-run" => Policy { dry_run: true, unpoliced: Fate::Drop, ..base },
        other => bail!("unknown fuzz policy `{other}` (default, strict, dry-run)"),
    })
}

pub const POLICIES: [&str; 3] = ["default", "strict", "dry-run"];

fn role(nic: Nic) -> Option<edge_filter::Role> {
    nic.role()
}

pub use edge_filter::report::verdict_name;

fn hex(frame: &[u8]) -> String {
    frame.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The kernel's verdict: the one counter of the NIC that moved.
fn kernel_verdict(h: &Harness, frame: &[u8], nic: Nic) -> anyhow::Result<u32> {
    let (ifindex, slot) = h.prepare(nic)?;
    let before = h.filter.slot_counters(slot)?;
    h.send(frame, ifindex)?;
    let after = h.filter.slot_counters(slot)?;
    let moved: Vec<u32> = (0..verdict::SLOTS).filter(|v| after[*v as usize].packets != before[*v as usize].packets).collect();
    match moved[..] {
        [v] => Ok(v),
        _ => bail!("{} counters moved for one frame: {moved:?}", moved.len()),
    }
}

/// A disagreement.
#[derive(Debug)]
pub struct Disagreement {
    pub index: u64,
    pub policy: &'static str,
    pub nic: Nic,
    pub frame: Vec<u8>,
    pub kernel: u32,
    pub model: u32,
    pub what: &'static str,
    /// A smaller frame that disagrees on fresh state, if the reduction found one.
    pub minimal: Option<Vec<u8>>,
}

impl std::fmt::Display for Disagreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "disagreement at frame {} ({}, policy {}, NIC {:?}):", self.index, self.what, self.policy, self.nic)?;
        writeln!(f, "  kernel {}, model {}", verdict_name(self.kernel), verdict_name(self.model))?;
        writeln!(f, "  frame {}", hex(&self.frame))?;
        match &self.minimal {
            Some(m) => write!(f, "  minimal reproducer (fresh state) {}", hex(m)),
            None => write!(f, "  depends on earlier frames: no stateless reproducer"),
        }
    }
}

/// Whether a fresh kernel and a fresh model disagree on this one frame.
fn disagrees_fresh(h: &mut Harness, policy: &Policy, frame: &[u8], nic: Nic) -> anyhow::Result<bool> {
    h.reset_state()?;
    let mut m = Model::new(plan::sets(), policy.clone());
    Ok(kernel_verdict(h, frame, nic)? != m.judge(frame, role(nic)))
}

/// Cut bytes from the end, then zero bytes, while a fresh pair still disagrees.
fn reduce(h: &mut Harness, policy: &Policy, frame: &[u8], nic: Nic) -> anyhow::Result<Option<Vec<u8>>> {
    if !disagrees_fresh(h, policy, frame, nic)? {
        return Ok(None);
    }
    let mut best = frame.to_vec();
    while best.len() > 14 {
        let shorter = &best[..best.len() - 1];
        if !disagrees_fresh(h, policy, shorter, nic)? {
            break;
        }
        best.truncate(best.len() - 1);
    }
    for i in 14..best.len() {
        if best[i] != 0 {
            let mut zeroed = best.clone();
            zeroed[i] = 0;
            if disagrees_fresh(h, policy, &zeroed, nic)? {
                best = zeroed;
            }
        }
    }
    Ok(Some(best))
}

/// What a run compared: frames per verdict.
#[derive(Debug, Default)]
pub struct Tally {
    pub frames: u64,
    pub by_verdict: std::collections::BTreeMap<String, u64>,
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.by_verdict.iter().map(|(v, n)| format!("{v} {n}")).collect();
        write!(f, "{}", parts.join(", "))
    }
}

/// Run `packets` frames from `seed` under each policy in turn (a third each).
/// Returns what was compared, or the first disagreement.
pub fn run(seed: u64, packets: u64, fixtures: Option<&Path>) -> anyhow::Result<Result<Tally, Box<Disagreement>>> {
    let mut frames = Generator::new(seed);
    let mut tally = Tally::default();
    let per_policy = packets.div_ceil(POLICIES.len() as u64);
    let mut done = 0;
    for name in POLICIES {
        let policy = policy(name)?;
        let mut h = Harness::with_tables(policy.clone(), 1 << 16, 1 << 16).context("load the filter")?;
        let mut model = Model::new(plan::sets(), policy.clone());
        for _ in 0..per_policy.min(packets - done) {
            let s = frames.sample();
            let kernel = kernel_verdict(&h, &s.frame, s.nic).with_context(|| format!("frame {done}: {}", hex(&s.frame)))?;
            let expected = model.judge(&s.frame, role(s.nic));
            if kernel != expected {
                let minimal = reduce(&mut h, &policy, &s.frame, s.nic)?;
                let d = Disagreement { index: done, policy: name, nic: s.nic, frame: s.frame, kernel, model: expected, what: s.what, minimal };
                if let (Some(dir), Some(m)) = (fixtures, &d.minimal) {
                    write_fixture(dir, &d, m)?;
                }
                return Ok(Err(Box::new(d)));
            }
            done += 1;
            *tally.by_verdict.entry(verdict_name(expected)).or_default() += 1;
        }
    }
    tally.frames = done;
    Ok(Ok(tally))
}

/// A fixture: the policy, the NIC, the frame, and the model's verdict.
fn write_fixture(dir: &Path, d: &Disagreement, frame: &[u8]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut m = Model::new(plan::sets(), policy(d.policy)?);
    let expected = m.judge(frame, role(d.nic));
    let name = format!("{}-{:?}-{}.case", d.policy, d.nic, &hex(frame)[..hex(frame).len().min(24)]).to_lowercase();
    let text = format!(
        "# Found by the differential run (frame {}, {}), reduced; the model's verdict.\npolicy {}\nnic {:?}\nverdict {}\nframe {}\n",
        d.index,
        d.what,
        d.policy,
        d.nic,
        verdict_name(expected),
        hex(frame)
    );
    std::fs::write(dir.join(&name), text)?;
    eprintln!("fixture written: {}", dir.join(name).display());
    Ok(())
}

/// A fixture read back.
pub struct Fixture {
    pub policy: String,
    pub nic: Nic,
    pub verdict: u32,
    pub frame: Vec<u8>,
}

/// Read a fixture file.
pub fn read_fixture(path: &Path) -> anyhow::Result<Fixture> {
    let text = std::fs::read_to_string(path)?;
    let mut fields = std::collections::HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (k, v) = line.split_once(' ').with_context(|| format!("{}: `{line}`", path.display()))?;
        fields.insert(k, v.trim());
    }
    let get = |k: &str| fields.get(k).copied().with_context(|| format!("{}: no `{k}`", path.display()));
    let nic = match get("nic")? {
        "Outside" => Nic::Outside,
        "Edge" => Nic::Edge,
        "Host" => Nic::Host,
        "Unattached" => Nic::Unattached,
        other => bail!("{}: unknown NIC {other}", path.display()),
    };
    let name = get("verdict")?;
    let verdict = (0..verdict::SLOTS).find(|v| verdict_name(*v) == name).with_context(|| format!("{}: unknown verdict {name}", path.display()))?;
    let hexs = get("frame")?;
    let frame = (0..hexs.len()).step_by(2).map(|i| u8::from_str_radix(&hexs[i..i + 2], 16)).collect::<Result<_, _>>()?;
    Ok(Fixture { policy: get("policy")?.to_owned(), nic, verdict, frame })
}
