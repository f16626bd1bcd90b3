//! The BPF maps of the XDP program. Names, keys, values and sizes are defined in
//! `edge-filter-common`; userspace creates, pins and fills them by those names.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use edge_filter_common::{
    COUNTER_ENTRIES, Counter, DEFAULT_MAX_EMBRYOS, DEFAULT_MAX_FLOWS, Flow, FlowKey, Iface, LogBudget, MAX_IFINDEX,
    MAX_SET_ENTRIES, PrefixLens, SetKey4, SetKey6, Settings, event, hint, rule,
};

/// ifindex -> role (0: none) and counter slot of the NIC. Written by userspace.
#[map]
pub static IFACES: Array<Iface> = Array::with_max_entries(MAX_IFINDEX, 0);

/// IPv4 prefix (length, network address in network order) -> `set` bits. Written by
/// userspace.
#[map]
pub static EDGE4: HashMap<SetKey4, u32> = HashMap::with_max_entries(MAX_SET_ENTRIES, 0);

/// IPv6 prefix (length, network address in network order) -> `set` bits. Written by
/// userspace.
#[map]
pub static EDGE6: HashMap<SetKey6, u32> = HashMap::with_max_entries(MAX_SET_ENTRIES, 0);

/// Index 0 or 1 (the one `EDGE_LENS_AT` names) -> the prefix lengths of `EDGE4` and
/// `EDGE6`, longest first. Written by userspace.
#[map]
pub static EDGE_LENS: Array<PrefixLens> = Array::with_max_entries(2, 0);

/// Index 0 -> the current entry of `EDGE_LENS`. Written by userspace.
#[map]
pub static EDGE_LENS_AT: Array<u32> = Array::with_max_entries(1, 0);

/// Word -> 64 bucket bits, `hint::WORDS` words per family (IPv4 first): which buckets
/// of leading address bits some edge prefix falls in. Written by userspace.
#[map]
pub static EDGE_HINTS: Array<u64> = Array::with_max_entries(2 * hint::WORDS, 0);

/// Index 0 -> the settings (ports in network order). Written by userspace.
#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// Opener's 5-tuple -> flow whose handshake completed. Written here; size set by
/// userspace at load time.
#[map]
pub static FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// Opener's 5-tuple -> handshake in progress. Written here; size set by userspace.
#[map]
pub static EMBRYOS: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(DEFAULT_MAX_EMBRYOS, 0);

/// `slot * verdict::SLOTS + verdict` -> packets and bytes, per CPU. Written here.
#[map]
pub static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(COUNTER_ENTRIES, 0);

/// Rule id -> packets and bytes that matched the rule, per CPU. Written here.
#[map]
pub static RULE_HITS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(rule::COUNT, 0);

/// `event` index -> occurrences, per CPU. Written here.
#[map]
pub static EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(event::COUNT, 0);

/// Index 0 -> the drop log's window and lines used in it, per CPU. Written here.
#[map]
pub static LOG_BUDGET: PerCpuArray<LogBudget> = PerCpuArray::with_max_entries(1, 0);
