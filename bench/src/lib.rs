//! The benchmark: what edge-filter costs per packet and how many packets per second
//! it holds, measured side by side with the floor (the cheapest XDP programs there
//! are), xdp-filter and nftables, on this machine, in one run.
//!
//! It measures with the test support of `edge-filter-tests`: the [`Harness`] and the
//! namespace topology, and the floor and the traffic generator of
//! [`edge_filter_tests::programs`]. The `bench` binary runs it (`cargo xtask bench`);
//! its records go to `bench/results/` beside this crate, its page to
//! `docs/benchmark.md`. Needs root.
//!
//! [`Harness`]: edge_filter_tests::Harness
//!
//! - [`cost`]: nanoseconds per packet on every verdict path, with BPF_PROG_TEST_RUN
//!   `repeat` on the real object, against the floor and xdp-filter on the same frames;
//!   and how that cost grows with the address sets and the flow table.
//! - [`throughput`]: packets per second through a veth pair, from an in-kernel
//!   generator in one namespace to the receiver under test in another.
//! - [`scrape`]: what a `/metrics` scrape costs the daemon as the flow table grows.
//! - [`rivals`]: xdp-filter and nftables, set up as close to the policy as each can be.
//! - [`report`]: the terminal table, the JSON record, `docs/benchmark.md` and its SVG
//!   charts.
//!
//! Contract:
//! - Variants are interleaved round by round (their order rotates each round), and a
//!   figure is the median over the rounds, with its spread (min..max). Each figure is
//!   also a ratio to the floor measured in the same round, which cancels most of the
//!   drift of a shared machine.
//! - Every run checks the verdicts as it measures: the XDP action of each program;
//!   for edge-filter, that the counter of the expected verdict moved by exactly the
//!   packets sent (in the veth figures: no generated frame judged otherwise; a rate
//!   counts the frames a receiver judged, as a receiver slower than the generator
//!   loses the rest at the veth's ring), and that each handshake the paths need
//!   left its flow. A wrong verdict fails the benchmark; a slow one never does.
//! - Everything it creates (namespaces, devices, programs, nftables tables) lives in
//!   namespaces of its own and goes with them, also on failure.

pub mod cost;
pub mod report;
pub mod rivals;
pub mod scrape;
pub mod throughput;

use std::time::{SystemTime, UNIX_EPOCH};

/// How much to measure.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub rounds: usize,
    /// BPF_PROG_TEST_RUN repetitions per cost figure.
    pub repeat: u32,
    /// Frames per throughput figure.
    pub frames: u32,
    /// Growth sizes: address sets, flow table.
    pub set_sizes: &'static [usize],
    pub flow_sizes: &'static [usize],
    /// Flow-table sizes of the scrape figure.
    pub scrape_sizes: &'static [usize],
}

impl Plan {
    /// The full benchmark.
    pub const FULL: Plan = Plan {
        rounds: 5,
        repeat: 1_000_000,
        frames: 2_000_000,
        set_sizes: &[1, 1_000, 65_536],
        flow_sizes: &[1, 100_000, 1_000_000],
        scrape_sizes: &[0, 100_000, 1_000_000],
    };
    /// One short round: the harness and the verdicts, not the times.
    pub const QUICK: Plan =
        Plan { rounds: 1, repeat: 2_000, frames: 20_000, set_sizes: &[1, 1_000], flow_sizes: &[1, 10_000], scrape_sizes: &[0, 10_000] };
}

/// Samples of one figure, one per round.
#[derive(Clone, Debug, Default)]
pub struct Series(pub Vec<f64>);

impl Series {
    pub fn push(&mut self, v: f64) {
        self.0.push(v);
    }

    /// The median (the mean of the middle two for an even count).
    pub fn median(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    pub fn min(&self) -> f64 {
        self.0.iter().copied().fold(f64::INFINITY, f64::min)
    }

    pub fn max(&self) -> f64 {
        self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({ "median": self.median(), "min": self.min(), "max": self.max(), "samples": self.0 })
    }
}

/// A figure in absolute units and as a ratio to the floor of its round.
#[derive(Clone, Debug, Default)]
pub struct Figure {
    pub value: Series,
    pub ratio: Series,
}

impl Figure {
    pub fn record(&mut self, value: f64, floor: f64) {
        self.value.push(value);
        self.ratio.push(value / floor);
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({ "value": self.value.json(), "ratio_to_floor": self.ratio.json() })
    }
}

/// Where and when the figures were taken.
#[derive(Clone, Debug)]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    /// UTC, `YYYY-MM-DD HH:MM`.
    pub date: String,
}

impl Machine {
    pub fn read() -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned()))
            .unwrap_or_else(|| "unknown".into());
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self { kernel, cpu, cpus, date: utc_now() }
    }
}

/// The current UTC time as `YYYY-MM-DD HH:MM` (civil-from-days, H. Hinnant).
fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", rem / 3600, rem % 3600 / 60)
}

/// `items` rotated left by `round`: each round starts with another variant.
pub fn rotated<T: Clone>(items: &[T], round: usize) -> Vec<T> {
    let mut v = items.to_vec();
    if !v.is_empty() {
        let n = v.len();
        v.rotate_left(round % n);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_spread() {
        assert_eq!(Series(vec![3.0, 1.0, 2.0]).median(), 2.0);
        assert_eq!(Series(vec![4.0, 1.0, 2.0, 3.0]).median(), 2.5);
        let s = Series(vec![5.0, 1.0, 9.0]);
        assert_eq!((s.min(), s.max()), (1.0, 9.0));
        assert_eq!(rotated(&[1, 2, 3], 4), vec![2, 3, 1]);
        assert_eq!(utc_now().len(), "2026-11-29 18:04".len());
    }
}
