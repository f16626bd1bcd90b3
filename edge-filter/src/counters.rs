//! Counters as the operator reads them: per NIC slot and verdict (action and reason),
//! packets and bytes, and hits per rule.
//!
//! Contract: names come from `edge-filter-common` (`verdict::name`, `rule::NAMES`),
//! the same names the CLI and metrics show; slots without a name are never reported.

use edge_filter_common::{Counter, counter_index, rule, verdict};

/// One counter with its names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    pub slot: u32,
    pub verdict: u32,
    pub action: &'static str,
    pub reason: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

/// A snapshot of every counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counters {
    by_index: Vec<Counter>,
    rules: [Counter; rule::COUNT as usize],
}

impl Counters {
    pub(crate) fn new(by_index: Vec<Counter>, rules: [Counter; rule::COUNT as usize]) -> Self {
        Self { by_index, rules }
    }

    /// Packets and bytes of one NIC slot and verdict.
    pub fn get(&self, slot: u32, verdict: u32) -> Counter {
        self.by_index.get(counter_index(slot, verdict) as usize).copied().unwrap_or_default()
    }

    /// Packets and bytes that matched a rule.
    pub fn rule(&self, rule: u32) -> Counter {
        self.rules.get(rule as usize).copied().unwrap_or_default()
    }

    /// Every named counter that is not zero, by slot and verdict.
    pub fn rows(&self) -> impl Iterator<Item = Row> + '_ {
        self.by_index.iter().enumerate().filter_map(|(i, c)| {
            let slot = i as u32 / verdict::SLOTS;
            let v = i as u32 % verdict::SLOTS;
            let (action, reason) = verdict::name(v)?;
            (c.packets != 0).then_some(Row { slot, verdict: v, action, reason, packets: c.packets, bytes: c.bytes })
        })
    }

    /// `(rule name, hits)` for every rule.
    pub fn rule_rows(&self) -> impl Iterator<Item = (&'static str, Counter)> + '_ {
        rule::NAMES.iter().copied().zip(self.rules.iter().copied())
    }

    /// What moved between `earlier` and `self`: every counter whose packets changed.
    pub fn since(&self, earlier: &Counters) -> Delta {
        let moved = self
            .rows()
            .filter_map(|r| {
                let before = earlier.get(r.slot, r.verdict);
                (r.packets != before.packets).then_some(Row {
                    packets: r.packets - before.packets,
                    bytes: r.bytes - before.bytes,
                    ..r
                })
            })
            .collect();
        let rules = std::array::from_fn(|i| Counter {
            packets: self.rules[i].packets - earlier.rules[i].packets,
            bytes: self.rules[i].bytes - earlier.rules[i].bytes,
        });
        Delta { moved, rules }
    }
}

/// The difference between two snapshots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta {
    /// Counters that moved, with the amount they moved by.
    pub moved: Vec<Row>,
    /// Rule hits gained, indexed by rule id.
    pub rules: [Counter; rule::COUNT as usize],
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_filter_common::COUNTER_ENTRIES;

    fn snapshot(entries: &[(u32, u32, u64, u64)], rule_hits: [u64; 3]) -> Counters {
        let mut by_index = vec![Counter::default(); COUNTER_ENTRIES as usize];
        for &(slot, v, packets, bytes) in entries {
            by_index[counter_index(slot, v) as usize] = Counter { packets, bytes };
        }
        Counters::new(by_index, rule_hits.map(|packets| Counter { packets, bytes: packets * 60 }))
    }

    #[test]
    fn rows_name_nonzero_counters() {
        let c = snapshot(&[(1, verdict::PASS_RULE, 2, 120), (2, verdict::DROP_SPOOFED + 8, 1, 60)], [2, 0, 0]);
        let rows: Vec<_> = c.rows().map(|r| (r.slot, r.action, r.reason, r.packets, r.bytes)).collect();
        assert_eq!(rows, vec![(1, "pass", "rule", 2, 120), (2, "would_drop", "spoofed", 1, 60)]);
        assert_eq!(c.rule_rows().next(), Some(("federation-in", Counter { packets: 2, bytes: 120 })));
    }

    #[test]
    fn delta_reports_only_what_moved() {
        let before = snapshot(&[(1, verdict::PASS_RULE, 2, 120)], [2, 0, 0]);
        let after = snapshot(&[(1, verdict::PASS_RULE, 2, 120), (1, verdict::DROP_NO_RULE, 3, 180)], [2, 0, 1]);
        let d = after.since(&before);
        assert_eq!(d.moved.len(), 1);
        assert_eq!((d.moved[0].reason, d.moved[0].packets, d.moved[0].bytes), ("no_rule", 3, 180));
        assert_eq!(d.rules[2].packets, 1);
        assert_eq!(d.rules[0].packets, 0);
    }
}
