//! The per-CPU counters in the maps: per NIC slot and verdict, per row, per event;
//! read summed over the CPUs.

use edge_filter_common::{COUNTER_ENTRIES, Counter, MAX_RULES, counter_index, event, map, verdict};

use super::{Error, Maps, map_err};
use crate::counters::Counters;

fn add(acc: Counter, c: &Counter) -> Counter {
    Counter { packets: acc.packets + c.packets, bytes: acc.bytes + c.bytes }
}

impl Maps {
    /// Packet and byte counters per NIC slot and verdict, and hits per rule.
    pub fn counters(&self) -> Result<Counters, Error> {
        let by_index = self.per_cpu_sums(map::COUNTERS, add)?;
        let rules = self.per_cpu_sums(map::RULE_HITS, add)?;
        if by_index.len() != COUNTER_ENTRIES as usize || rules.len() != MAX_RULES as usize {
            return Err(Error::Corrupt { name: map::COUNTERS, what: format!("{} counters, {} rule counters", by_index.len(), rules.len()) });
        }
        Ok(Counters::new(by_index, rules, self.rule_names()?))
    }

    /// Occurrences of each `event`, summed over CPUs.
    pub fn events(&self) -> Result<Vec<u64>, Error> {
        let mut events = self.per_cpu_sums(map::EVENTS, |acc: u64, n: &u64| acc + n)?;
        events.resize(event::COUNT as usize, 0);
        Ok(events)
    }

    /// Packets and bytes of one NIC slot, by verdict (summed over CPUs): a cheaper read
    /// than [`Maps::counters`] when one NIC is watched.
    pub fn slot_counters(&self, slot: u32) -> Result<[Counter; verdict::SLOTS as usize], Error> {
        let mut out = [Counter::default(); verdict::SLOTS as usize];
        for (v, c) in out.iter_mut().enumerate() {
            let per_cpu = self.counters.get(&counter_index(slot, v as u32), 0).map_err(map_err(map::COUNTERS))?;
            *c = per_cpu.iter().fold(Counter::default(), add);
        }
        Ok(out)
    }
}
