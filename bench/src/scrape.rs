//! What the operator's views cost the daemon as the flow table grows: a `/metrics`
//! scrape's time and the daemon's CPU per scrape, at 0, 100k and 1M flows, and the
//! census (the one pass over the state tables the views read) beside them.
//!
//! Contract:
//! - A real daemon (`edge-filter run`) in the sandbox of namespaces, its flow table
//!   filled to each size through the pinned map; a reload (SIGHUP) makes it count
//!   the tables at once, and the scrape must then say exactly that many flows before
//!   anything is timed (a wrong count fails the benchmark, a slow scrape never does).
//! - Scrape time: wall time of one HTTP GET from the firewall's namespace, median of
//!   [`SCRAPES`] per round. Daemon CPU per scrape: CPU time of the daemon's threads
//!   other than the census thread (`/proc/<pid>/task/*/schedstat`, nanoseconds) over
//!   those scrapes, divided by their number. The census: the daemon's own
//!   `edge_filter_census_duration_seconds` for the pass the reload took.
//! - Ratios are to the same figure at 0 flows in the same round: flat is 1.0.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, ensure};
use edge_filter::Maps;

use super::{Figure, Plan, Series};
use edge_filter_tests::topology::Topology;

/// Scrapes per round and size.
pub(super) const SCRAPES: usize = 20;
/// Where the benchmark's daemon serves `/metrics` (in its own namespace).
const METRICS: &str = "127.0.0.1:9851";

/// The figures at one flow-table size.
pub struct ScrapePoint {
    pub flows: usize,
    /// Milliseconds per scrape; ratio to 0 flows.
    pub scrape_ms: Figure,
    /// Daemon CPU milliseconds per scrape; ratio to 0 flows.
    pub cpu_ms: Figure,
    /// Milliseconds of one census pass (not per scrape: once per interval).
    pub census_ms: Series,
}

/// CPU nanoseconds of the daemon's threads but its census thread.
fn daemon_cpu_ns(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?.path();
        if std::fs::read_to_string(task.join("comm")).is_ok_and(|c| c.trim() == "census") {
            continue;
        }
        let stat = std::fs::read_to_string(task.join("schedstat")).unwrap_or_default();
        total += stat.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    }
    Ok(total)
}

/// One GET /metrics from the current namespace: (wall time, body).
fn scrape_once(addr: SocketAddr) -> anyhow::Result<(Duration, String)> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let took = start.elapsed();
    ensure!(text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"), "GET /metrics: {text}");
    Ok((took, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
}

fn sample(body: &str, name: &str) -> anyhow::Result<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no {name} in the scrape"))
}

/// Scrape cost at each of `plan.scrape_sizes` flows.
pub fn scrape_cost(plan: &Plan) -> anyhow::Result<Vec<ScrapePoint>> {
    let t = Topology::new()?;
    let largest = plan.scrape_sizes.iter().copied().max().unwrap_or(0);
    // Room to spare, so the LRU evicts none of the flows written.
    let max_flows = (2 * largest).max(1024);
    let config = t.write_config(&format!("[state]\nmax-flows = {max_flows}\ncensus-interval = 3600\n[metrics]\nlisten = \"{METRICS}\"\n"))?;
    let daemon = t.start(&config)?;
    let pid = daemon.pid().context("the daemon's pid")?;
    let addr: SocketAddr = METRICS.parse()?;
    let mut maps = Maps::open_pinned(&edge_filter::pins::Pins::new(&t.pin_dir).maps_dir())?;
    let mut points: Vec<ScrapePoint> = Vec::new();
    for &flows in plan.scrape_sizes {
        maps.clear_state()?;
        let now = edge_filter::report::monotonic_ns();
        maps.insert_flows((0..flows as u32).map(|n| super::throughput::generated_flow(n, now)))?;
        let mut point = ScrapePoint { flows, scrape_ms: Figure::default(), cpu_ms: Figure::default(), census_ms: Series::default() };
        for _ in 0..plan.rounds {
            // A reload takes a census at once; wait for it and check its count.
            let since = SystemTime::now();
            daemon.signal(libc::SIGHUP);
            let body = t.metrics_counted_after(addr, since)?;
            let counted = sample(&body, "edge_filter_flows")?;
            ensure!(counted == flows as f64, "the census counted {counted} flows, {flows} were written");
            point.census_ms.push(sample(&body, "edge_filter_census_duration_seconds")? * 1e3);
            let cpu_before = daemon_cpu_ns(pid)?;
            let walls =
                t.fw.enter(move || -> anyhow::Result<Vec<f64>> { (0..SCRAPES).map(|_| Ok(scrape_once(addr)?.0.as_secs_f64() * 1e3)).collect() })??;
            let cpu = (daemon_cpu_ns(pid)? - cpu_before) as f64 / 1e6 / SCRAPES as f64;
            point.scrape_ms.value.push(Series(walls).median());
            point.cpu_ms.value.push(cpu);
        }
        points.push(point);
    }
    // Ratios to the emptiest table, round by round.
    if let Some(base) = points.first().map(|p| (p.scrape_ms.value.clone(), p.cpu_ms.value.clone())) {
        for p in &mut points {
            p.scrape_ms.ratio = Series(p.scrape_ms.value.0.iter().zip(&base.0.0).map(|(v, b)| v / b).collect());
            p.cpu_ms.ratio = Series(p.cpu_ms.value.0.iter().zip(&base.1.0).map(|(v, b)| v / b).collect());
        }
    }
    daemon.stop()?;
    Ok(points)
}
