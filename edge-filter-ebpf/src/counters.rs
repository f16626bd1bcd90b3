//! Per-CPU counters: one per NIC slot and verdict, one per rule, one per `event`.
//! Per-CPU arrays need no atomics; userspace sums the CPUs.

use edge_filter_common::{Counter, counter_index};

use crate::maps::{COUNTERS, EVENTS, RULE_HITS};

#[inline(always)]
fn add(counter: Option<*mut Counter>, bytes: u64) {
    if let Some(c) = counter {
        // SAFETY: the pointer comes from a per-CPU array lookup: it is valid for the
        // program's run and no other CPU writes this CPU's copy.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

/// Count a packet of `bytes` under the NIC `slot` and `verdict`.
#[inline(always)]
pub(crate) fn count_verdict(slot: u32, verdict: u32, bytes: u64) {
    add(COUNTERS.get_ptr_mut(counter_index(slot, verdict)), bytes);
}

/// Count a packet of `bytes` that matched `rule`.
#[inline(always)]
pub(crate) fn count_rule(rule: u32, bytes: u64) {
    add(RULE_HITS.get_ptr_mut(rule), bytes);
}

/// Count one occurrence of `event` `e`.
#[inline(always)]
pub(crate) fn count_event(e: u32) {
    if let Some(n) = EVENTS.get_ptr_mut(e) {
        // SAFETY: as in `add`.
        unsafe { *n += 1 };
    }
}
