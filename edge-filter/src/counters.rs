//! Counters as the operator reads them: per NIC slot and verdict (action and reason),
//! packets and bytes, and hits per rule.
//!
//! Contract: verdict names come from `edge-filter-common` (`verdict::name`), row names
//! from the kernel's rule table (the row ids), the same names the CLI and metrics
//! show; slots without a name are never reported.

use edge_filter_common::{Counter, MAX_RULES, counter_index, verdict};

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
    /// Hits per row slot.
    rules: Vec<Counter>,
    /// The id of each row slot in use.
    names: Vec<Option<String>>,
}

impl Counters {
    pub(crate) fn new(by_index: Vec<Counter>, mut rules: Vec<Counter>, mut names: Vec<Option<String>>) -> Self {
        rules.resize(MAX_RULES as usize, Counter::default());
        names.resize(MAX_RULES as usize, None);
        Self { by_index, rules, names }
    }

    /// Packets and bytes of one NIC slot and verdict.
    pub fn get(&self, slot: u32, verdict: u32) -> Counter {
        self.by_index.get(counter_index(slot, verdict) as usize).copied().unwrap_or_default()
    }

    /// Packets and bytes that opened the row in `slot`.
    pub fn rule(&self, slot: u32) -> Counter {
        self.rules.get(slot as usize).copied().unwrap_or_default()
    }

    /// Hits of the row with this id.
    pub fn rule_named(&self, id: &str) -> Counter {
        self.names.iter().position(|n| n.as_deref() == Some(id)).map_or_else(Counter::default, |s| self.rules[s])
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

    /// `(row id, hits)` for every row of the table, in slot order.
    pub fn rule_rows(&self) -> impl Iterator<Item = (&str, Counter)> + '_ {
        self.names.iter().zip(&self.rules).filter_map(|(n, c)| Some((n.as_deref()?, *c)))
    }

    /// What moved between `earlier` and `self`: every counter whose packets changed.
    pub fn since(&self, earlier: &Counters) -> Delta {
        let moved = self
            .rows()
            .filter_map(|r| {
                let before = earlier.get(r.slot, r.verdict);
                (r.packets != before.packets).then_some(Row { packets: r.packets - before.packets, bytes: r.bytes - before.bytes, ..r })
            })
            .collect();
        let rules = self
            .rules
            .iter()
            .zip(&earlier.rules)
            .map(|(now, then)| Counter { packets: now.packets.wrapping_sub(then.packets), bytes: now.bytes.wrapping_sub(then.bytes) })
            .collect();
        Delta { moved, rules }
    }
}

/// The difference between two snapshots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta {
    /// Counters that moved, with the amount they moved by.
    pub moved: Vec<Row>,
    /// Row hits gained, by row slot.
    pub rules: Vec<Counter>,
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
        let names = ["federation-in", "federation-out", "internal-mtls"].map(|n| Some(n.to_owned())).to_vec();
        Counters::new(by_index, rule_hits.map(|packets| Counter { packets, bytes: packets * 60 }).to_vec(), names)
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
