//! The census of the state tables: how many flows and handshakes are live, and how
//! many the LRU evicted, counted so that a scrape or a `status` does not pay for the
//! size of the tables.
//!
//! Contract:
//! - A [`Census`] is one pass over the four state tables (flows, both handshake
//!   tables, UDP flows), read in batches, counting the entries present and the live
//!   ones by state, judged by the kernel's timeouts ([`flow_is_live`]). It costs
//!   O(entries); nothing else about flows does.
//! - The daemon takes one every `state.census-interval` on a thread of its own and
//!   publishes it: to `/metrics` in memory, to `status` and `stats` in
//!   [`Pins::census_path`](crate::pins::Pins::census_path) (removed when the daemon
//!   ends). A scrape and a `status` then read a fixed number of array entries and the
//!   published census: O(1) in the flows. Without a running daemon, `status` takes a
//!   census itself. Every view says when its census was taken.
//! - The event counters (created, expired, closed, refused) are always read at the
//!   moment of the view; live and past-timeout counts and LRU evictions are as of the
//!   census. Evictions are derived (created minus every removal we made minus what is
//!   present) and never go down from one census to the next.

use std::{
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use edge_filter_common::{Flow, Settings, event as e, flow_state as st};
use serde::{Deserialize, Serialize};

use crate::loader::{Error, Maps, STATE_TABLES, Table};

/// Default time between two censuses of the daemon.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// Whether `flow` is within its idle timeout at `now_ns` (`CLOCK_MONOTONIC`), as the
/// kernel program judges it (`state.rs`, `expired`): the UDP timeout in the UDP table;
/// else the SYN timeout for `syn_sent`/`syn_recv`, the established timeout for
/// `established`, the closing timeout for the rest (`closing`, `reset`).
pub fn flow_is_live(flow: &Flow, settings: &Settings, udp: bool, now_ns: u64) -> bool {
    now_ns.saturating_sub(flow.last_seen_ns) <= settings.idle_timeout_ns(flow.state, udp)
}

/// One state table, as the census saw it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    /// Entries in the table, live or not.
    pub present: u64,
    /// Live entries by `flow_state`.
    pub live: [u64; 8],
    /// Entries the LRU evicted since the tables were created.
    pub evicted: u64,
}

impl Count {
    fn live(&self) -> u64 {
        self.live.iter().sum()
    }
}

/// One pass over the state tables.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Census {
    /// When it was taken: wall clock, Unix milliseconds.
    pub taken_unix_ms: u64,
    /// How long the pass took, microseconds.
    pub took_us: u64,
    /// The process that took it.
    pub pid: u32,
    /// The daemon's interval between censuses; zero for one taken by a command.
    pub interval_ms: u64,
    pub flows: Count,
    pub embryos: Count,
    pub embryos_out: Count,
    pub udp: Count,
}

/// A census being taken: the entries of each table in [`STATE_TABLES`] are added one by
/// one, by [`Census::take`]'s own pass or by a caller that reads the tables anyway
/// (`flows` counts what it lists).
pub struct Tally {
    started: Instant,
    taken_unix_ms: u64,
    settings: Settings,
    /// The events before the pass: a flow created during it may be missed by the
    /// walk, and would then be counted as evicted if the events were read after.
    events: Vec<u64>,
    now_ns: u64,
    counts: [Count; 4],
}

impl Tally {
    pub fn new(maps: &Maps) -> Result<Self, Error> {
        Ok(Self {
            started: Instant::now(),
            taken_unix_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            settings: maps.settings()?,
            events: maps.events()?,
            now_ns: crate::report::monotonic_ns(),
            counts: [Count::default(); 4],
        })
    }

    /// One entry of table `table` (an index of [`STATE_TABLES`]).
    pub fn add(&mut self, table: usize, flow: &Flow) {
        let c = &mut self.counts[table];
        c.present += 1;
        if flow_is_live(flow, &self.settings, STATE_TABLES[table].udp(), self.now_ns) {
            c.live[usize::from(flow.state & 7)] += 1;
        }
    }

    /// The census, with evictions derived; `previous` (the census before, by the same
    /// taker) keeps them from going down when entries come and go during the pass.
    pub fn finish(mut self, previous: Option<&Census>) -> Census {
        let before = previous.map(|p| [p.flows, p.embryos, p.embryos_out, p.udp]);
        for (i, Table { entered, removed, .. }) in STATE_TABLES.iter().enumerate() {
            let at = |e: u32| self.events.get(e as usize).copied().unwrap_or(0);
            let sum = |events: &[u32]| -> u64 { events.iter().map(|e| at(*e)).sum() };
            let c = &mut self.counts[i];
            c.evicted = sum(entered).saturating_sub(sum(removed) + c.present).max(before.map_or(0, |b| b[i].evicted));
        }
        let [flows, embryos, embryos_out, udp] = self.counts;
        Census {
            taken_unix_ms: self.taken_unix_ms,
            took_us: self.started.elapsed().as_micros() as u64,
            pid: std::process::id(),
            interval_ms: 0,
            flows,
            embryos,
            embryos_out,
            udp,
        }
    }
}

impl Census {
    /// Count the state tables now, in one pass over them (see [`Tally::finish`] for
    /// `previous`).
    pub fn take(maps: &Maps, previous: Option<&Census>) -> Result<Self, Error> {
        let mut tally = Tally::new(maps)?;
        for (i, table) in STATE_TABLES.iter().enumerate() {
            maps.each_flow(table, |_, f| tally.add(i, f))?;
        }
        Ok(tally.finish(previous))
    }

    /// The state-table events: counters as `events` (read now) has them, live and
    /// evicted entries as of this census.
    pub fn flow_events(&self, events: &[u64]) -> FlowEvents {
        let at = |i: u32| events.get(i as usize).copied().unwrap_or(0);
        let table = |c: &Count, created: u32, expired: u32, closed: Option<u32>, failed: u32| TableEvents {
            created: at(created),
            picked_up: match created {
                e::FLOW_CREATED => at(e::FLOW_PICKED_UP),
                e::UDP_CREATED => at(e::UDP_PICKED_UP),
                _ => 0,
            },
            expired: at(expired),
            closed: closed.map_or(0, at),
            evicted: c.evicted,
            insert_failed: at(failed),
            live: c.live(),
            stale: c.present - c.live(),
        };
        FlowEvents {
            flows: table(&self.flows, e::FLOW_CREATED, e::FLOW_EXPIRED, Some(e::FLOW_CLOSED), e::FLOW_INSERT_FAILED),
            embryos: table(&self.embryos, e::EMBRYO_CREATED, e::EMBRYO_EXPIRED, Some(e::EMBRYO_CLOSED), e::EMBRYO_INSERT_FAILED),
            embryos_out: table(
                &self.embryos_out,
                e::EMBRYO_OUT_CREATED,
                e::EMBRYO_OUT_EXPIRED,
                Some(e::EMBRYO_OUT_CLOSED),
                e::EMBRYO_OUT_INSERT_FAILED,
            ),
            udp: table(&self.udp, e::UDP_CREATED, e::UDP_EXPIRED, None, e::UDP_INSERT_FAILED),
            source_limited: at(e::SOURCE_LIMITED),
            live: LiveFlows {
                established: self.flows.live[usize::from(st::ESTABLISHED)],
                closing: self.flows.live[usize::from(st::CLOSING)] + self.flows.live[usize::from(st::RESET)],
                handshakes: self.embryos.live() + self.embryos_out.live(),
                udp: self.udp.live(),
            },
        }
    }

    /// How old this census is.
    pub fn age(&self) -> Duration {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        Duration::from_millis(now.saturating_sub(self.taken_unix_ms))
    }

    /// Where the census came from, for the views: `daemon` or `this command`.
    pub fn taker(&self) -> &'static str {
        if self.interval_ms == 0 { "this command" } else { "daemon" }
    }

    /// Write the census where `status` finds it: a new file renamed over the old,
    /// so a reader never sees half of one.
    pub fn publish(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(self)?)?;
        std::fs::rename(&tmp, path)
    }

    /// The census a running daemon published at `path`: `None` when there is none,
    /// when the daemon that wrote it is gone, or when it is older than three of its
    /// intervals (the daemon is stuck): the caller then counts for itself.
    pub fn published(path: &Path) -> Option<Self> {
        let census: Census = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        let alive = Path::new(&format!("/proc/{}", census.pid)).exists();
        let fresh = census.age() <= Duration::from_millis(census.interval_ms.saturating_mul(3).max(1000));
        (alive && fresh && census.interval_ms > 0).then_some(census)
    }
}

/// What happened in one state table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TableEvents {
    pub created: u64,
    /// Picked up from the trusted side (flow tables only): see
    /// [`edge_filter_common::origin::PICKED_UP`].
    pub picked_up: u64,
    pub expired: u64,
    /// Removed by an RST or a new SYN; for embryos, also promoted to the flow table.
    pub closed: u64,
    /// As of the census.
    pub evicted: u64,
    pub insert_failed: u64,
    /// Entries within their idle timeout, as of the census.
    pub live: u64,
    /// Entries past their idle timeout that nothing had removed yet: not live.
    pub stale: u64,
}

/// Live entries of the state tables by what they are, judged by the kernel's
/// timeouts ([`flow_is_live`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LiveFlows {
    /// Flow table, `established`.
    pub established: u64,
    /// Flow table, `closing` or `reset`.
    pub closing: u64,
    /// Both handshake tables: `syn_sent`, `syn_recv`.
    pub handshakes: u64,
    /// UDP flow table.
    pub udp: u64,
}

/// What happened in the flow table, the handshake tables and the UDP table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlowEvents {
    pub flows: TableEvents,
    /// Handshakes opened from outside.
    pub embryos: TableEvents,
    /// Handshakes the trusted side opened.
    pub embryos_out: TableEvents,
    pub udp: TableEvents,
    /// Completed handshakes not recorded: their source held its share of the table.
    pub source_limited: u64,
    /// The live entries by what they are.
    pub live: LiveFlows,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_now_and_table_counts_as_of_the_census() {
        let mut census = Census { interval_ms: 10_000, ..Census::default() };
        census.flows = Count { present: 5, live: [0, 0, 3, 1, 0, 0, 0, 0], evicted: 2 };
        let mut events = vec![0; e::COUNT as usize];
        events[e::FLOW_CREATED as usize] = 40;
        events[e::SOURCE_LIMITED as usize] = 7;
        let ev = census.flow_events(&events);
        assert_eq!(ev.flows.created, 40);
        assert_eq!(ev.flows.evicted, 2);
        assert_eq!(ev.flows.live, 4);
        assert_eq!(ev.flows.stale, 1);
        assert_eq!(ev.source_limited, 7);
        assert_eq!(ev.live.established + ev.live.closing, 4);
        assert_eq!(census.taker(), "daemon");
    }

    #[test]
    fn a_published_census_is_read_back_only_while_its_daemon_lives_and_it_is_fresh() {
        let dir = std::env::temp_dir().join(format!("edge-filter-census-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.census.json");
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let ours = Census { taken_unix_ms: now, pid: std::process::id(), interval_ms: 1000, ..Census::default() };
        ours.publish(&path).unwrap();
        assert_eq!(Census::published(&path), Some(ours.clone()));
        // Older than three intervals: the daemon is stuck.
        Census { taken_unix_ms: now - 5000, ..ours.clone() }.publish(&path).unwrap();
        assert_eq!(Census::published(&path), None);
        // A pid that is not running.
        Census { pid: u32::MAX - 1, ..ours.clone() }.publish(&path).unwrap();
        assert_eq!(Census::published(&path), None);
        // One a command took for itself is never published as the daemon's.
        Census { interval_ms: 0, ..ours }.publish(&path).unwrap();
        assert_eq!(Census::published(&path), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
