//! The BPF maps of the XDP program. Names, keys, values and sizes are defined in
//! `edge-filter-common`; userspace creates, pins and fills them by those names.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use edge_filter_common::{
    COUNTER_ENTRIES, Config, Counter, DEFAULT_MAX_EMBRYOS, DEFAULT_MAX_EMBRYOS_OUT, DEFAULT_MAX_FLOWS, DEFAULT_MAX_UDP_FLOWS, Exact4, Exact6, Flow,
    FlowKey, FlowKey4, LogBudget, MAX_RULES, MAX_SET_ENTRIES, MAX_SETS, Rule, RuleTables, SetBits, SetKey4, SetKey6, SetName, SourceKey, event,
    exact, hint,
};

/// Index 0 -> the configuration: settings (ports in network order), NICs by ifindex,
/// the sets' prefix lengths and small tables. Written by userspace.
#[map]
pub(crate) static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// IPv4 prefix (length, network address in network order) -> set masks. Written by
/// userspace.
#[map]
pub(crate) static EDGE4: HashMap<SetKey4, SetBits> = HashMap::with_max_entries(MAX_SET_ENTRIES, 0);

/// IPv6 prefix (length, network address in network order) -> set masks. Written by
/// userspace.
#[map]
pub(crate) static EDGE6: HashMap<SetKey6, SetBits> = HashMap::with_max_entries(MAX_SET_ENTRIES, 0);

/// Bucket -> the IPv4 sets' single addresses that fall in it (`edge_filter_common::exact`).
/// Written by userspace.
#[map]
pub(crate) static EXACT4: Array<Exact4> = Array::with_max_entries(exact::BUCKETS, 0);

/// Bucket -> the IPv6 sets' single addresses that fall in it. Written by userspace.
#[map]
pub(crate) static EXACT6: Array<Exact6> = Array::with_max_entries(exact::BUCKETS, 0);

/// Set index -> its name. Written and read by userspace; here so that it is pinned
/// with the rest.
#[map]
pub(crate) static SET_NAMES: Array<SetName> = Array::with_max_entries(MAX_SETS, 0);

/// `gen * MAX_RULES + row` -> the row as written. Written and read by userspace.
#[map]
pub(crate) static RULES: Array<Rule> = Array::with_max_entries(2 * MAX_RULES, 0);

/// Generation (`Settings::rules_at`) -> the rule table compiled into row masks by port
/// and by set. Written by userspace, a generation whole.
#[map]
pub(crate) static RULE_TABLES: Array<RuleTables> = Array::with_max_entries(2, 0);

/// Word -> 64 bucket bits, `hint::WORDS` words per family (IPv4 first): which buckets
/// of leading address bits some edge prefix falls in. Written by userspace.
#[map]
pub(crate) static EDGE_HINTS: Array<u64> = Array::with_max_entries(2 * hint::WORDS, 0);

/// Opener's 5-tuple -> IPv6 flow whose handshake completed. Written here; size set by
/// userspace at load time.
#[map]
pub(crate) static FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// Opener's 5-tuple -> IPv6 handshake in progress. Written here; size set by userspace.
#[map]
pub(crate) static EMBRYOS: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(DEFAULT_MAX_EMBRYOS, 0);

/// Opener's 5-tuple -> IPv6 handshake the trusted side opened. Written here; size set by
/// userspace.
#[map]
pub(crate) static EMBRYOS_OUT: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(DEFAULT_MAX_EMBRYOS_OUT, 0);

/// Opener's 5-tuple -> IPv6 UDP flow. Written here; size set by userspace.
#[map]
pub(crate) static UDP_FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(DEFAULT_MAX_UDP_FLOWS, 0);

/// The IPv4 tables, as the four above (`edge_filter_common::map::FLOWS4`): keyed by
/// 12 bytes, which the kernel hashes in one round where the 40-byte key takes four.
#[map]
pub(crate) static FLOWS4: LruHashMap<FlowKey4, Flow> = LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);
#[map]
pub(crate) static EMBRYOS4: LruHashMap<FlowKey4, Flow> = LruHashMap::with_max_entries(DEFAULT_MAX_EMBRYOS, 0);
#[map]
pub(crate) static EMBRYOS_OUT4: LruHashMap<FlowKey4, Flow> = LruHashMap::with_max_entries(DEFAULT_MAX_EMBRYOS_OUT, 0);
#[map]
pub(crate) static UDP_FLOWS4: LruHashMap<FlowKey4, Flow> = LruHashMap::with_max_entries(DEFAULT_MAX_UDP_FLOWS, 0);

/// Source prefix -> established flows it holds. Written here (counts up and down) and
/// by the daemon (recounts); sized as the flow table by userspace.
#[map]
pub(crate) static SOURCES: LruHashMap<SourceKey, u64> = LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// `slot * verdict::SLOTS + verdict` -> packets and bytes, per CPU. Written here.
#[map]
pub(crate) static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(COUNTER_ENTRIES, 0);

/// Row -> packets and bytes that matched the row as an opener's, per CPU. Written here.
#[map]
pub(crate) static RULE_HITS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(MAX_RULES, 0);

/// `event` index -> occurrences, per CPU. Written here.
#[map]
pub(crate) static EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(event::COUNT, 0);

/// Index 0 -> the drop log's window and lines used in it, per CPU. Written here.
#[map]
pub(crate) static LOG_BUDGET: PerCpuArray<LogBudget> = PerCpuArray::with_max_entries(1, 0);
