//! Types shared by the kernel programs and userspace.
//!
//! Everything here crosses the kernel boundary through a BPF map, so it is plain data:
//! fixed-width integers and byte arrays, `#[repr(C)]`, explicit padding, and a
//! compile-time size check per type. There are no `bool`, `enum`, `Option` or `usize`
//! fields: the kernel side never interprets bytes as a Rust enum, and userspace
//! validates every value before it writes it.
//!
//! Byte order is part of each name: addresses are network order (`[u8; 4]`,
//! `[u8; 16]`, masked to a prefix length as they are), ports stored for the data path are network order
//! (`*_be`), everything else is host order.
//!
//! The `user` feature adds `aya::Pod` implementations so userspace can read and write
//! the maps.
#![no_std]

use core::mem::size_of;

/// Map names. The kernel caps object names at 15 bytes; `const` checks below hold
/// every name to that.
pub mod map {
    /// `Array<Config>` with one entry: the settings, the role and counter slot of
    /// each NIC by ifindex, and the address sets' prefix lengths and small tables. One
    /// value, so that a packet finds all of it with one array read. Written by
    /// userspace.
    pub const CONFIG: &str = "CONFIG";
    /// `HashMap<SetKey4, SetBits>`: IPv4 address sets (edge and peer), one entry per
    /// prefix, keyed by its length and network address. Written by userspace.
    pub const EDGE4: &str = "EDGE4";
    /// `HashMap<SetKey6, SetBits>`: IPv6 address sets, as [`EDGE4`]. Written by
    /// userspace.
    pub const EDGE6: &str = "EDGE6";
    /// `Array<Exact4>`, [`super::exact::BUCKETS`] buckets: the IPv4 sets' single
    /// addresses (/32), by [`super::exact::bucket4`], so that a packet finds one
    /// without a hash call; those a full bucket cannot take are in [`EDGE4`]. Written
    /// by userspace.
    pub const EXACT4: &str = "EXACT4";
    /// `Array<Exact6>`: the IPv6 sets' single addresses (/128), as [`EXACT4`].
    pub const EXACT6: &str = "EXACT6";
    /// `Array<SetName>`, [`super::MAX_SETS`] entries: the name of each set index
    /// (empty: unused) and how many prefixes it holds. Written by userspace; read by
    /// userspace only.
    pub const SET_NAMES: &str = "SET_NAMES";
    /// `Array<Rule>`, two generations of [`super::MAX_RULES`] rows
    /// (`gen * MAX_RULES + row`): the rule table as the operator wrote it. Written by
    /// userspace; read by userspace only (the kernel reads the masks below).
    pub const RULES: &str = "RULES";
    /// `Array<RuleTables>` with two entries, one per generation: the rule table
    /// compiled into the masks the kernel matches packets with. Written by userspace,
    /// a generation whole.
    pub const RULE_TABLES: &str = "RULE_TABLES";
    /// `Array<u64>`, [`super::hint::WORDS`] words per family (IPv4 first): a bit per
    /// [`super::hint`] bucket that some edge prefix falls in. An address whose bucket
    /// bit is clear is in no set, found without probing the set tables. Written by
    /// userspace.
    pub const EDGE_HINTS: &str = "EDGE_HINTS";
    /// `LruHashMap<FlowKey, Flow>`: IPv6 connections whose handshake completed
    /// ([`FLOWS4`]: IPv4). Written by the kernel programs; userspace reads and may
    /// delete.
    pub const FLOWS: &str = "FLOWS";
    /// `LruHashMap<FlowKey, Flow>`: IPv6 connections an allowed SYN opened whose
    /// handshake has not completed ([`EMBRYOS4`]: IPv4). Separate, so that a SYN flood
    /// evicts only its own kind. Written by the kernel programs.
    pub const EMBRYOS: &str = "EMBRYOS";
    /// `LruHashMap<FlowKey, Flow>`: IPv6 handshakes the trusted side opened (from an
    /// `edge` NIC, or the host's own at TC egress; [`EMBRYOS_OUT4`]: IPv4). A table of
    /// their own, so that no SYN from outside, however many, evicts the Edge's own
    /// connection attempts. Written by the kernel programs.
    pub const EMBRYOS_OUT: &str = "EMBRYOS_OUT";
    /// `LruHashMap<FlowKey, Flow>`: IPv6 UDP flows an allowed datagram opened
    /// ([`UDP_FLOWS4`]: IPv4). Separate, so that no amount of UDP evicts a TCP flow.
    /// Written by the kernel programs.
    pub const UDP_FLOWS: &str = "UDP_FLOWS";
    /// `LruHashMap<FlowKey4, Flow>`: [`FLOWS`] for IPv4. Each table kind has a table
    /// per family so that an IPv4 flow's key is 12 bytes ([`super::FlowKey4`]), which
    /// the kernel hashes in one round where a 40-byte key takes four.
    pub const FLOWS4: &str = "FLOWS4";
    /// `LruHashMap<FlowKey4, Flow>`: [`EMBRYOS`] for IPv4.
    pub const EMBRYOS4: &str = "EMBRYOS4";
    /// `LruHashMap<FlowKey4, Flow>`: [`EMBRYOS_OUT`] for IPv4.
    pub const EMBRYOS_OUT4: &str = "EMBRYOS_OUT4";
    /// `LruHashMap<FlowKey4, Flow>`: [`UDP_FLOWS`] for IPv4.
    pub const UDP_FLOWS4: &str = "UDP_FLOWS4";
    /// `LruHashMap<SourceKey, u64>`: established TCP flows per source prefix (the
    /// side of a flow that is not the Edge's), counted up by the kernel when a flow
    /// enters [`FLOWS`] and down when it removes one; recounted by the daemon, which
    /// sees what LRU evictions and unlooked-at expiries left behind.
    pub const SOURCES: &str = "SOURCES";
    /// `PerCpuArray<Counter>` indexed by `slot * VERDICT_SLOTS + verdict`. Written by
    /// the kernel programs.
    pub const COUNTERS: &str = "COUNTERS";
    /// `PerCpuArray<Counter>` indexed by row ([`super::MAX_RULES`]). Written by the
    /// kernel programs.
    pub const RULE_HITS: &str = "RULE_HITS";
    /// `PerCpuArray<u64>` indexed by `event`: things that happen besides verdicts.
    /// Written by the kernel programs.
    pub const EVENTS: &str = "EVENTS";
    /// `PerCpuArray<LogBudget>` with one entry: the drop log's rate limit. Written by
    /// the kernel programs.
    pub const LOG_BUDGET: &str = "LOG_BUDGET";

    /// Every map, for pinning and listing.
    pub const ALL: [&str; 22] = [
        CONFIG,
        EDGE4,
        EDGE6,
        EXACT4,
        EXACT6,
        SET_NAMES,
        EDGE_HINTS,
        RULES,
        RULE_TABLES,
        FLOWS,
        EMBRYOS,
        EMBRYOS_OUT,
        UDP_FLOWS,
        FLOWS4,
        EMBRYOS4,
        EMBRYOS_OUT4,
        UDP_FLOWS4,
        SOURCES,
        COUNTERS,
        RULE_HITS,
        EVENTS,
        LOG_BUDGET,
    ];

    const _: () = {
        let mut i = 0;
        while i < ALL.len() {
            assert!(ALL[i].len() <= 15, "kernel object names are cut to 15 bytes");
            i += 1;
        }
        assert!(super::XDP_PROGRAM.len() <= 15 && super::XDP_PROGRAM_LINEAR.len() <= 15);
        assert!(super::TC_PROGRAM.len() <= 15);
    };
}

/// Name of the TC egress program that records the flows a host-mode machine opens.
pub const TC_PROGRAM: &str = "edge_filter_eg";
/// Name of the multi-buffer XDP program (kernel 5.18+).
pub const XDP_PROGRAM: &str = "edge_filter";
/// Name of the single-buffer XDP program, for older kernels.
pub const XDP_PROGRAM_LINEAR: &str = "edge_filter_lin";

/// NICs the program can serve. Counter slot 0 is reserved for NICs without a role.
pub const MAX_IFACES: u32 = 64;
/// NICs are found by ifindex in an array (a lookup the verifier inlines, where a hash
/// lookup is a call), so the program serves NICs whose ifindex is below this.
pub const MAX_IFINDEX: u32 = 1024;
/// Entries per address-set table (per family).
pub const MAX_SET_ENTRIES: u32 = 1 << 17;
/// Distinct prefix lengths the address sets may hold per family: an address is
/// looked up once per length present, longest first.
pub const MAX_PREFIX_LENS: usize = 8;
/// Default size of the flow table; userspace may set another at load time.
pub const DEFAULT_MAX_FLOWS: u32 = 262_144;
/// Default size of the embryonic table (handshakes in progress).
pub const DEFAULT_MAX_EMBRYOS: u32 = 65_536;
/// Default share of the flow table one source prefix may hold: a sixteenth of the
/// default table.
pub const DEFAULT_MAX_FLOWS_PER_SOURCE: u32 = DEFAULT_MAX_FLOWS / 16;
/// Default size of the table of handshakes the trusted side opened.
pub const DEFAULT_MAX_EMBRYOS_OUT: u32 = 16_384;
/// Default size of the UDP flow table.
pub const DEFAULT_MAX_UDP_FLOWS: u32 = 65_536;
/// Rows of the rule table: a row is a bit of a `u64` mask.
pub const MAX_RULES: u32 = 64;
/// Address sets, edge and peer: a set is a bit of the 16-bit set masks.
pub const MAX_SETS: u32 = 16;
/// Bytes of a row id or set name, NUL-padded.
pub const NAME_LEN: usize = 32;
/// The index of a protocol in [`RuleTables::ports`]: TCP 0, UDP 1.
pub const fn proto_index(proto: u8) -> Option<u32> {
    match proto {
        ipproto::TCP => Some(0),
        ipproto::UDP => Some(1),
        _ => None,
    }
}

/// IP protocol numbers (IANA) that the programs read: upper layers, and the IPv6
/// extension headers walked before them.
pub mod ipproto {
    pub const HOPOPTS: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AH: u8 = 51;
    pub const ICMPV6: u8 = 58;
    pub const DSTOPTS: u8 = 60;
}

/// TCP flag bits, as in byte 13 of the header (RFC 9293 §3.1).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// Role of a NIC, as stored in [`Iface::role`].
pub mod role {
    /// Faces partners or the corporate network; untrusted.
    pub const OUTSIDE: u32 = 1;
    /// Faces the Edge server's interfaces.
    pub const EDGE: u32 = 2;
    /// Edge addresses are local to this machine; judged like `OUTSIDE` at ingress.
    pub const HOST: u32 = 3;

    /// Bit of a role in [`super::Flow::reply_roles`].
    pub const fn bit(role: u32) -> u8 {
        1 << role
    }
}

/// Set indexes. The first [`set::EDGE_COUNT`] are the edge sets, whose addresses are
/// policed; the rest are peer sets, which rows match and nothing polices. An address's
/// set mask has bit `1 << index` for each set that holds it.
pub mod set {
    /// The Access Edge service interface addresses.
    pub const ACCESS_EDGE: u32 = 0;
    /// The Web Conferencing Edge service addresses.
    pub const WEBCONF_EDGE: u32 = 1;
    /// The A/V Edge service addresses.
    pub const AV_EDGE: u32 = 2;
    /// The internal Edge interface addresses.
    pub const INTERNAL_EDGE: u32 = 3;
    /// Edge sets: indexes below this.
    pub const EDGE_COUNT: u32 = 4;
    /// The mask bits of the edge sets: an address with any of them is policed.
    pub const EDGE_BITS: u32 = (1 << EDGE_COUNT) - 1;
    /// Names of the edge sets, by index.
    pub const EDGE_NAMES: [&str; EDGE_COUNT as usize] = ["access-edge", "webconf-edge", "av-edge", "internal-edge"];
    /// A row's source or destination that matches every address.
    pub const ANY: u8 = 0xff;
}

/// Verdicts: what happened to a packet and why. One counter per NIC and verdict.
///
/// Pass reasons are below [`verdict::DROP_BASE`]; drop reasons from there; a drop
/// reason plus [`verdict::DRY_RUN_OFFSET`] is the same reason in dry-run, where the
/// packet passed.
pub mod verdict {
    pub const PASS_RULE: u32 = 0;
    pub const PASS_REPLY: u32 = 1;
    pub const PASS_ESSENTIAL: u32 = 2;
    pub const PASS_UNPOLICED: u32 = 3;
    pub const PASS_UNATTACHED: u32 = 4;
    /// A policed fragment passed because the `fragments` setting says `pass`.
    pub const PASS_FRAGMENT: u32 = 5;
    /// An ICMP or ICMPv6 error about a packet of a live flow.
    pub const PASS_RELATED: u32 = 6;

    pub const DROP_BASE: u32 = 8;
    pub const DROP_NO_RULE: u32 = 8;
    pub const DROP_SPOOFED: u32 = 9;
    pub const DROP_MALFORMED: u32 = 10;
    pub const DROP_FRAGMENT: u32 = 11;
    pub const DROP_UNPOLICED: u32 = 12;

    /// Added to a drop verdict when dry-run turns it into a pass.
    pub const DRY_RUN_OFFSET: u32 = 8;

    /// Counter slots per NIC.
    pub const SLOTS: u32 = 24;

    /// Whether the packet is dropped under this verdict.
    pub const fn is_drop(v: u32) -> bool {
        // One comparison: below DROP_BASE wraps to a large number.
        v.wrapping_sub(DROP_BASE) < DRY_RUN_OFFSET
    }

    /// `(action, reason)` of a verdict, as the CLI and metrics name it.
    pub const fn name(v: u32) -> Option<(&'static str, &'static str)> {
        let reason = match reason(v) {
            Some(r) => r,
            None => return None,
        };
        let action = if v < DROP_BASE {
            "pass"
        } else if v < DROP_BASE + DRY_RUN_OFFSET {
            "drop"
        } else {
            "would_drop"
        };
        Some((action, reason))
    }

    const fn reason(v: u32) -> Option<&'static str> {
        Some(match v {
            PASS_RULE => "rule",
            PASS_REPLY => "reply",
            PASS_ESSENTIAL => "essential",
            PASS_UNPOLICED => "unpoliced",
            PASS_UNATTACHED => "unattached",
            PASS_FRAGMENT => "fragment",
            PASS_RELATED => "related",
            _ if v >= DROP_BASE && v < SLOTS => match (v - DROP_BASE) % DRY_RUN_OFFSET {
                0 => "no_rule",
                1 => "spoofed",
                2 => "malformed",
                3 => "fragment",
                4 => "unpoliced",
                _ => return None,
            },
            _ => return None,
        })
    }
}

/// Indexes of [`map::EVENTS`].
pub mod event {
    /// Drops reported through the drop log.
    pub const DROP_LOGGED: u32 = 0;
    /// Drops the drop log's rate limit kept quiet.
    pub const DROP_LOG_SUPPRESSED: u32 = 1;
    /// Handshakes completed: flows entered the flow table.
    pub const FLOW_CREATED: u32 = 2;
    /// Flows found expired and removed.
    pub const FLOW_EXPIRED: u32 = 3;
    /// Flows removed by an RST at the right sequence number.
    pub const FLOW_CLOSED: u32 = 4;
    /// Flows the table refused.
    pub const FLOW_INSERT_FAILED: u32 = 5;
    /// SYNs recorded in the embryonic table.
    pub const EMBRYO_CREATED: u32 = 6;
    /// Embryonic entries found expired and removed.
    pub const EMBRYO_EXPIRED: u32 = 7;
    /// Embryonic entries removed by an RST, or promoted to the flow table.
    pub const EMBRYO_CLOSED: u32 = 8;
    /// SYNs the embryonic table refused.
    pub const EMBRYO_INSERT_FAILED: u32 = 9;
    /// Datagrams that opened a UDP flow.
    pub const UDP_CREATED: u32 = 10;
    /// UDP flows found expired and removed.
    pub const UDP_EXPIRED: u32 = 11;
    /// UDP flows the table refused.
    pub const UDP_INSERT_FAILED: u32 = 12;
    /// Completed handshakes not recorded: their source prefix holds its share of the
    /// flow table already.
    pub const SOURCE_LIMITED: u32 = 13;
    /// SYNs from the trusted side recorded in their own handshake table.
    pub const EMBRYO_OUT_CREATED: u32 = 14;
    /// Such handshakes found expired and removed.
    pub const EMBRYO_OUT_EXPIRED: u32 = 15;
    /// Such handshakes removed by an RST, or promoted to the flow table.
    pub const EMBRYO_OUT_CLOSED: u32 = 16;
    /// Such SYNs the table refused.
    pub const EMBRYO_OUT_INSERT_FAILED: u32 = 17;
    /// TCP flows picked up from the trusted side mid-connection.
    pub const FLOW_PICKED_UP: u32 = 18;
    /// UDP flows picked up from the trusted side (the Edge answering a datagram this
    /// node never saw).
    pub const UDP_PICKED_UP: u32 = 19;
    /// Entries of the map.
    pub const COUNT: u32 = 32;
    /// Names as the CLI and metrics show them, for the indexes in use.
    pub const NAMES: [(u32, &str); 20] = [
        (DROP_LOGGED, "drop_logged"),
        (DROP_LOG_SUPPRESSED, "drop_log_suppressed"),
        (FLOW_CREATED, "flow_created"),
        (FLOW_EXPIRED, "flow_expired"),
        (FLOW_CLOSED, "flow_closed"),
        (FLOW_INSERT_FAILED, "flow_insert_failed"),
        (EMBRYO_CREATED, "embryo_created"),
        (EMBRYO_EXPIRED, "embryo_expired"),
        (EMBRYO_CLOSED, "embryo_closed"),
        (EMBRYO_INSERT_FAILED, "embryo_insert_failed"),
        (UDP_CREATED, "udp_created"),
        (UDP_EXPIRED, "udp_expired"),
        (UDP_INSERT_FAILED, "udp_insert_failed"),
        (SOURCE_LIMITED, "source_limited"),
        (EMBRYO_OUT_CREATED, "embryo_out_created"),
        (EMBRYO_OUT_EXPIRED, "embryo_out_expired"),
        (EMBRYO_OUT_CLOSED, "embryo_out_closed"),
        (EMBRYO_OUT_INSERT_FAILED, "embryo_out_insert_failed"),
        (FLOW_PICKED_UP, "flow_picked_up"),
        (UDP_PICKED_UP, "udp_picked_up"),
    ];
}

/// Bits of [`Settings::flags`].
pub mod flags {
    /// Unpoliced traffic is dropped (default: passed).
    pub const UNPOLICED_DROP: u32 = 1 << 0;
    /// Policed fragments pass (default: dropped).
    pub const FRAGMENTS_PASS: u32 = 1 << 1;
    /// Dry-run: nothing is dropped, would-be drops are counted as `would_drop/*`.
    pub const DRY_RUN: u32 = 1 << 2;
    /// Report drops (and would-be drops) through the log ring, rate-limited.
    pub const DROP_LOG: u32 = 1 << 3;
    /// On `host` NICs, link-local, broadcast and multicast destinations are unpoliced
    /// (default: policed like the edge addresses).
    pub const HOST_LINK_PASS: u32 = 1 << 4;
    /// Flows are not picked up from the trusted side (default: they are; see
    /// [`crate::origin::PICKED_UP`]).
    pub const NO_PICKUP: u32 = 1 << 5;
    /// On `host` NICs, DHCP servers' answers (UDP 67 to 68, DHCPv6 547 to 546) are
    /// essential: the host takes its addresses by DHCP.
    pub const HOST_DHCP: u32 = 1 << 6;
    /// All defined bits.
    pub const ALL: u32 = UNPOLICED_DROP | FRAGMENTS_PASS | DRY_RUN | DROP_LOG | HOST_LINK_PASS | NO_PICKUP | HOST_DHCP;
}

/// Flow states, the values of [`Flow::state`].
pub mod flow_state {
    /// Embryonic: the opener sent a SYN; no answer yet.
    pub const SYN_SENT: u8 = 1;
    /// The handshake completed (in the flow table); for UDP, a live flow.
    pub const ESTABLISHED: u8 = 2;
    /// A FIN was acknowledged by its receiver; the flow lives for the closing timeout.
    pub const CLOSING: u8 = 3;
    /// Embryonic: the responder answered with a SYN-ACK that acknowledges the SYN.
    pub const SYN_RECV: u8 = 4;
    /// An RST inside the window but not at the receiver's next number: it lives for
    /// the closing timeout unless the side it was sent to speaks again (RFC 5961: that
    /// side answers such an RST with a challenge ACK and stays open).
    pub const RESET: u8 = 5;
    /// Names as the CLI shows them, indexed by state.
    pub const fn name(state: u8) -> &'static str {
        match state {
            SYN_SENT => "syn_sent",
            SYN_RECV => "syn_recv",
            ESTABLISHED => "established",
            CLOSING => "closing",
            RESET => "reset",
            _ => "unknown",
        }
    }
}

/// Bits of [`TcpDir::flags`].
pub mod dir_flags {
    /// This side sent a FIN; `end` is the number after it.
    pub const FIN: u8 = 1 << 0;
    /// This side was sent an in-window RST it has not answered yet.
    pub const RST_PENDING: u8 = 1 << 1;
    /// This side's SYN carried a window scale option (RFC 7323 §2.2: scaling holds
    /// only when both SYNs carry one).
    pub const WSCALE: u8 = 1 << 2;
    /// The trusted side of a picked-up flow (the Edge's, whose packets arrive on an
    /// `edge` NIC): its segments always fit, and what it acknowledges the other side
    /// has sent. Its history before the pickup is lost, so its bounds are relearned
    /// from its own packets.
    pub const LIBERAL: u8 = 1 << 3;
    /// The untrusted side of a picked-up flow: its RST ends the flow only at the
    /// number the trusted side acknowledged, never at its own `end`, which its own
    /// segments in a window of unknown scale can move.
    pub const UNSURE: u8 = 1 << 4;
}

/// How a flow entered its table, the values of [`Flow::origin`].
pub mod origin {
    /// Its first packet opened it: a completed handshake, a row's datagram.
    pub const OPENED: u8 = 0;
    /// Picked up from the trusted side: a packet the Edge sent (on an `edge` NIC,
    /// from an edge set, a row's packet or a row's reply, TCP without SYN or RST)
    /// for which this node held no flow, as after a failover from its peer.
    pub const PICKED_UP: u8 = 1;
}

/// A NIC in [`Config::ifaces`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Iface {
    /// One of [`role`]; 0 for a NIC without one.
    pub role: u32,
    /// Counter slot, `1..MAX_IFACES`; slot 0 counts NICs without a role.
    pub slot: u32,
}

/// Key of [`map::EDGE4`]: a prefix length and the network address (network order,
/// bits beyond `len` zero).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SetKey4 {
    pub len: u32,
    pub addr: [u8; 4],
}

/// Key of [`map::EDGE6`]: as [`SetKey4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SetKey6 {
    pub len: u32,
    pub addr: [u8; 16],
}

/// Value of [`map::EDGE4`] and [`map::EDGE6`]: set masks of one prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetBits {
    /// The sets that hold exactly this prefix: what the operator wrote.
    pub own: u32,
    /// The sets that hold an address of this prefix: `own` and the `own` of every
    /// shorter prefix that contains it. An address's longest matching prefix gives all
    /// its sets in one probe.
    pub all: u32,
}

/// A NUL-padded name of [`SetName`] or [`Rule`]: `None` when empty or not UTF-8.
pub fn name_of(bytes: &[u8; NAME_LEN]) -> Option<&str> {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(NAME_LEN);
    if end == 0 { None } else { core::str::from_utf8(&bytes[..end]).ok() }
}

/// Value of [`map::SET_NAMES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetName {
    /// NUL-padded; all zero for an unused index.
    pub name: [u8; NAME_LEN],
    /// The prefixes (addresses included) the set holds, as last written: what a
    /// scrape reports without reading the set tables.
    pub prefixes: u32,
    pub _pad: u32,
}

impl Default for SetName {
    fn default() -> Self {
        Self { name: [0; NAME_LEN], prefixes: 0, _pad: 0 }
    }
}

/// Value of [`map::RULES`]: one row as the operator wrote it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// NUL-padded row id; all zero for an unused row.
    pub id: [u8; NAME_LEN],
    /// First and last port of the row, host order.
    pub lo: u16,
    pub hi: u16,
    /// IP protocol number (6 or 17).
    pub proto: u8,
    /// Set index of the source, or [`set::ANY`].
    pub src: u8,
    /// Set index of the destination, or [`set::ANY`].
    pub dst: u8,
    /// The row's position in the table as the operator wrote it (slots keep ids
    /// across reloads, so they are not in that order).
    pub position: u8,
}

impl Default for Rule {
    fn default() -> Self {
        Self { id: [0; NAME_LEN], lo: 0, hi: 0, proto: 0, src: 0, dst: 0, position: 0 }
    }
}

/// One generation of [`map::RULE_TABLES`]: the rule table as the masks, one bit per
/// row, that a packet is matched with. One value, so that a packet finds both tables
/// of its generation in one lookup and reads each mask at an offset in it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleTables {
    /// `[proto][port]`: the rows whose protocol is `proto` ([`proto_index`]) and whose
    /// port or range holds `port` (host order).
    pub ports: [[u64; 65_536]; 2],
    /// `[half * 256 + byte]`: for the low (half 0) or high (half 1) byte of an
    /// address's set bits, the rows whose source and whose destination the address
    /// matches ("any" rows are in every entry of half 0).
    pub set_rows: [SetRows; 512],
}

/// An entry of [`RuleTables::set_rows`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetRows {
    /// Rows whose source matches an address with these set bits.
    pub src: u64,
    /// Rows whose destination matches it.
    pub dst: u64,
}

/// [`Settings::rulesets`]: which rows open from which NIC role. A row whose source
/// is an edge set opens from `edge` NICs (its replies arrive on `outside` and `host`
/// NICs); every other row opens from `outside` and `host` NICs (replies from `edge`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Rows that open from `outside` and `host` NICs ([`Ruleset::OUTSIDE`]) and from
    /// `edge` NICs ([`Ruleset::EDGE`]): indexed by whether the NIC is an edge one, so
    /// a packet finds its rows, and its reply direction's, without a branch.
    pub opens: [u64; 2],
}

impl Ruleset {
    /// [`Ruleset::opens`] of rows opened from `outside` and `host` NICs.
    pub const OUTSIDE: usize = 0;
    /// [`Ruleset::opens`] of rows opened from `edge` NICs.
    pub const EDGE: usize = 1;
}

/// Entries a family's address sets may hold and still be scanned in place
/// ([`PrefixLens::small4`]) rather than probed in the hash table.
pub const SMALL_SET: usize = 8;
/// [`PrefixLens::v4_small`] / `v6_small` of a family whose sets are too many to scan:
/// probe the hash table at each length.
pub const SMALL_NONE: u8 = 0xff;

/// One IPv4 prefix of a small set table: an address `a` (host order) is in it when
/// `a & mask == net`; `all` is its set mask ([`SetBits::all`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Small4 {
    pub net: u32,
    pub mask: u32,
    pub all: u32,
}

/// One IPv6 prefix of a small set table: the address's two halves, each loaded as a
/// native-endian `u64` from its network-order bytes, masked, equal `net`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Small6 {
    pub net: [u64; 2],
    pub mask: [u64; 2],
    pub all: u32,
    pub _pad: u32,
}

/// One of [`Config::lens`]: for each family, the prefix lengths its set
/// table holds, longest first; the first `*_count` entries count. `*_hint` is the
/// length [`hint`] buckets are taken at: at most the shortest length held.
///
/// A family whose sets hold at most [`SMALL_SET`] prefixes has them here as well,
/// longest first (`*_small` of them; [`SMALL_NONE`]: too many): the realistic Edge
/// has a handful of addresses, and a scan of them is a few instructions where a hash
/// probe is a call. The table is published whole with the lengths, so a packet sees
/// the old list or the new one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixLens {
    pub v4: [u8; MAX_PREFIX_LENS],
    pub v6: [u8; MAX_PREFIX_LENS],
    pub v4_count: u8,
    pub v6_count: u8,
    pub v4_hint: u8,
    pub v6_hint: u8,
    pub v4_small: u8,
    pub v6_small: u8,
    /// 1: the family's sets hold single addresses (/32, /128), which are in
    /// [`map::EXACT4`] / [`map::EXACT6`] and not among the lengths above.
    pub v4_exact: u8,
    pub v6_exact: u8,
    /// `hint::mask32(v4_hint)`: the hint's mask, so a packet does not compute it.
    pub v4_hint_mask: u32,
    /// `hint::mask6_words(v6_hint)`, likewise.
    pub v6_hint_mask: [u32; 4],
    pub _pad2: u32,
    pub small4: [Small4; SMALL_SET],
    pub small6: [Small6; SMALL_SET],
}

impl Default for PrefixLens {
    /// No lengths, no small tables: nothing is in any set until userspace writes.
    fn default() -> Self {
        Self {
            v4: [0; MAX_PREFIX_LENS],
            v6: [0; MAX_PREFIX_LENS],
            v4_count: 0,
            v6_count: 0,
            v4_hint: 0,
            v6_hint: 0,
            v4_small: SMALL_NONE,
            v6_small: SMALL_NONE,
            v4_exact: 0,
            v6_exact: 0,
            v4_hint_mask: 0,
            v6_hint_mask: [0; 4],
            _pad2: 0,
            small4: [Small4::default(); SMALL_SET],
            small6: [Small6::default(); SMALL_SET],
        }
    }
}

/// The tables of single addresses ([`map::EXACT4`], [`map::EXACT6`]): each address
/// has one bucket of [`exact::WAYS`] ways, found by multiplicative hashing that both
/// sides compute alike. A packet reads its address's bucket (an array read the
/// verifier inlines) and compares the ways; only an address whose bucket was full
/// when it was written is in the hash table, and its bucket says so
/// ([`Exact4::spilled`] counts them).
pub mod exact {
    /// Ways per bucket.
    pub const WAYS: usize = 4;
    /// Buckets per family: `2^BUCKETS_LOG2`.
    pub const BUCKETS_LOG2: u32 = 15;
    pub const BUCKETS: u32 = 1 << BUCKETS_LOG2;
    const K32: u32 = 0x9e37_79b1;
    const K64: u64 = 0x9e37_79b9_7f4a_7c15;

    /// The bucket of an IPv4 address (host-order value).
    #[inline(always)]
    pub fn bucket4(addr: u32) -> u32 {
        addr.wrapping_mul(K32) >> (32 - BUCKETS_LOG2)
    }

    /// The bucket of an IPv6 address, its halves each loaded as a native-endian `u64`
    /// from its network-order bytes (as [`super::Small6`]).
    #[inline(always)]
    pub fn bucket6(hi: u64, lo: u64) -> u32 {
        ((hi ^ lo.wrapping_mul(K64)).wrapping_mul(K64) >> (64 - BUCKETS_LOG2)) as u32
    }

    /// The halves [`bucket6`] and [`super::Exact6`] take of an address.
    #[inline(always)]
    pub fn halves6(addr: &[u8; 16]) -> [u64; 2] {
        let half =
            |i: usize| u64::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3], addr[i + 4], addr[i + 5], addr[i + 6], addr[i + 7]]);
        [half(0), half(8)]
    }

    /// The address whose [`halves6`] these are.
    #[inline(always)]
    pub fn octets6(halves: [u64; 2]) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&halves[0].to_ne_bytes());
        out[8..].copy_from_slice(&halves[1].to_ne_bytes());
        out
    }
}

/// A bucket of [`map::EXACT4`]. A way is empty when its `all` is 0 (an address in a
/// set has a non-zero mask).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exact4 {
    /// Host-order addresses.
    pub addr: [u32; exact::WAYS],
    /// [`SetBits::all`] of each way's address.
    pub all: [u32; exact::WAYS],
    /// [`SetBits::own`] of each way's address.
    pub own: [u32; exact::WAYS],
    /// Addresses of this bucket that found it full, and are in [`map::EDGE4`] at
    /// length 32: a packet whose address is in no way probes there when this is not 0.
    pub spilled: u32,
}

/// A bucket of [`map::EXACT6`], as [`Exact4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exact6 {
    /// Addresses as [`exact::halves6`].
    pub addr: [[u64; 2]; exact::WAYS],
    pub all: [u32; exact::WAYS],
    pub own: [u32; exact::WAYS],
    /// Addresses of this bucket in [`map::EDGE6`] at length 128.
    pub spilled: u32,
    pub _pad: u32,
}

/// Prefix arithmetic both sides share, and the buckets of [`map::EDGE_HINTS`].
///
/// Every prefix of a family is at least `hint` bits long, so an address inside a
/// prefix agrees with it on its first `hint` bits: both fall in the bucket of those
/// bits. A clear bucket bit proves an address is in no set.
pub mod hint {
    /// Words per family; `WORDS * 64` buckets.
    pub const WORDS: u32 = 1024;
    /// Knuth's multiplicative hashing constant (2^32 / golden ratio).
    const K: u32 = 0x9e37_79b1;

    /// The leading `keep` bits of a 32-bit word (`keep` is capped at 32).
    #[inline(always)]
    pub fn mask32(keep: u32) -> u32 {
        if keep == 0 { 0 } else { u32::MAX << (32 - keep.min(32)) }
    }

    /// An IPv6 address (network order) with every bit after the first `len` cleared.
    #[inline(always)]
    pub fn mask6(addr: &[u8; 16], len: u32) -> [u8; 16] {
        let mut out = *addr;
        for w in 0..4 {
            let keep = len.saturating_sub(32 * w as u32);
            let word = u32::from_be_bytes([out[4 * w], out[4 * w + 1], out[4 * w + 2], out[4 * w + 3]]) & mask32(keep);
            out[4 * w..4 * w + 4].copy_from_slice(&word.to_be_bytes());
        }
        out
    }

    /// The bucket (below `WORDS * 64`) of an IPv4 address (host-order value).
    #[inline(always)]
    pub fn bucket4(addr: u32, hint: u32) -> u32 {
        bucket4_masked(addr, mask32(hint))
    }

    /// [`bucket4`] with the hint's mask given (`mask32(hint)`).
    #[inline(always)]
    pub fn bucket4_masked(addr: u32, mask: u32) -> u32 {
        (addr & mask).wrapping_mul(K) >> 16
    }

    /// The mask of the first `len` bits of an IPv6 address, as four host-order words
    /// of its network-order bytes.
    #[inline(always)]
    pub fn mask6_words(len: u32) -> [u32; 4] {
        let mut out = [0u32; 4];
        for (w, m) in out.iter_mut().enumerate() {
            *m = mask32(len.saturating_sub(32 * w as u32));
        }
        out
    }

    /// [`bucket6`] with the hint's mask given (`mask6_words(hint)`).
    #[inline(always)]
    pub fn bucket6_masked(addr: &[u8; 16], mask: &[u32; 4]) -> u32 {
        let mut h = 0u32;
        for w in 0..4 {
            let word = u32::from_be_bytes([addr[4 * w], addr[4 * w + 1], addr[4 * w + 2], addr[4 * w + 3]]) & mask[w];
            h = (h ^ word).wrapping_mul(K);
        }
        h >> 16
    }

    /// The bucket of an IPv6 address (network order).
    #[inline(always)]
    pub fn bucket6(addr: &[u8; 16], hint: u32) -> u32 {
        bucket6_masked(addr, &mask6_words(hint))
    }

    const _: () = assert!(WORDS * 64 == 1 << 16, "buckets are the top 16 bits of the hash");
}

/// The settings, in [`Config::settings`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// [`flags`] bits.
    pub flags: u32,
    /// The current generation of the rule maps and of [`Settings::rulesets`] (0 or 1).
    /// Userspace writes the other generation whole, then flips this.
    pub rules_at: u32,
    /// Idle timeout of a flow whose SYN has not been answered, nanoseconds.
    pub syn_timeout_ns: u64,
    /// Idle timeout of an established flow, nanoseconds.
    pub established_timeout_ns: u64,
    /// Idle timeout of a flow after a FIN or an RST, nanoseconds.
    pub closing_timeout_ns: u64,
    /// Idle timeout of a UDP flow, nanoseconds.
    pub udp_timeout_ns: u64,
    /// Drop log lines per second and CPU, when [`flags::DROP_LOG`] is set.
    pub drop_log_per_sec: u32,
    /// Established TCP flows one source prefix may hold ([`map::SOURCES`]).
    pub max_flows_per_source: u32,
    /// Prefix lengths that make a source: IPv4, IPv6.
    pub source_len4: u8,
    pub source_len6: u8,
    pub _pad: [u8; 2],
    /// The current entry of [`Config::lens`] (0 or 1). Userspace writes the other
    /// entry whole, then flips this.
    pub lens_at: u32,
    /// Per rule generation, the rows that open from each NIC role. Here rather than in
    /// a map of their own, so that a packet reads them with the settings it has read
    /// already: one array read fewer each.
    pub rulesets: [Ruleset; 2],
}

impl Settings {
    /// The defaults: unpoliced traffic passes, policed fragments drop, enforcing,
    /// generation 0 of the rules.
    pub const DEFAULT: Self = Self {
        flags: 0,
        rules_at: 0,
        syn_timeout_ns: 60 * NS_PER_SEC,
        // RFC 5382 REQ-5: an established idle timeout of no less than 2 h 4 min.
        established_timeout_ns: 7440 * NS_PER_SEC,
        closing_timeout_ns: 120 * NS_PER_SEC,
        // RFC 4787 REQ-5: a UDP mapping lives at least 2 minutes idle.
        udp_timeout_ns: 120 * NS_PER_SEC,
        drop_log_per_sec: 10,
        max_flows_per_source: DEFAULT_MAX_FLOWS_PER_SOURCE,
        source_len4: 24,
        source_len6: 64,
        _pad: [0; 2],
        lens_at: 0,
        rulesets: [Ruleset { opens: [0; 2] }; 2],
    };
}

impl Settings {
    /// How long a flow in `state` ([`flow_state`]) may stay idle; `udp` for an entry
    /// of [`map::UDP_FLOWS`]. The kernel removes an entry idle longer; userspace counts
    /// it as not live.
    #[inline(always)]
    pub const fn idle_timeout_ns(&self, state: u8, udp: bool) -> u64 {
        if udp {
            return self.udp_timeout_ns;
        }
        match state {
            flow_state::SYN_SENT | flow_state::SYN_RECV => self.syn_timeout_ns,
            flow_state::ESTABLISHED => self.established_timeout_ns,
            _ => self.closing_timeout_ns,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The one value of [`map::CONFIG`]: what every packet reads before it is judged.
///
/// Userspace writes it whole (under the pin directory's lock, so from a value it has
/// just read), and a packet may read it meanwhile. A write copies every byte, so a
/// field that did not change reads the same throughout; what must change as one is
/// double-buffered: the prefix lengths are written into the entry of [`Config::lens`]
/// that [`Settings::lens_at`] does not name, and a second write flips `lens_at`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub settings: Settings,
    /// The address sets' prefix lengths and small tables, two generations.
    pub lens: [PrefixLens; 2],
    /// By ifindex: the NIC's role and counter slot; role 0 for NICs the program does
    /// not serve (and for every ifindex beyond [`MAX_IFINDEX`]).
    pub ifaces: [Iface; MAX_IFINDEX as usize],
}

impl Config {
    /// The current prefix lengths and small tables.
    #[inline(always)]
    pub fn lens(&self) -> &PrefixLens {
        &self.lens[(self.settings.lens_at & 1) as usize]
    }
}

impl Default for Config {
    /// The default settings, no NIC, nothing in any set.
    fn default() -> Self {
        Self { settings: Settings::DEFAULT, lens: [PrefixLens::default(); 2], ifaces: [Iface::default(); MAX_IFINDEX as usize] }
    }
}

/// Nanoseconds per second.
pub const NS_PER_SEC: u64 = 1_000_000_000;

/// Address family values of [`FlowKey::family`].
pub mod family {
    pub const V4: u8 = 4;
    pub const V6: u8 = 6;
}

/// Key of the IPv6 state tables ([`map::FLOWS`] and the rest), and a flow's tuple in
/// either family wherever one is listed or quoted: the 5-tuple in the direction of
/// the packet that opened the flow. IPv4 addresses sit in the first four bytes, the
/// rest is zero (the IPv4 tables key by [`FlowKey4`]).
///
/// Aligned to 8 bytes so that the kernel program writes it a word at a time: at byte
/// alignment LLVM turns the writes into calls of an out-of-line `memset` loop, whose
/// every iteration the verifier walks again on every path.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Opener's address, network order.
    pub src: [u8; 16],
    /// Responder's address, network order.
    pub dst: [u8; 16],
    /// Opener's port, network order.
    pub sport_be: u16,
    /// Responder's port, network order.
    pub dport_be: u16,
    /// [`family`].
    pub family: u8,
    /// IP protocol number.
    pub proto: u8,
    pub _pad: [u8; 2],
}

/// Key of the IPv4 state tables ([`map::FLOWS4`] and the rest): the 5-tuple in the
/// direction of the packet that opened the flow, its family and protocol those of
/// the table. Twelve bytes: the kernel hashes a key twelve bytes a round, and the
/// hash is most of what a lookup costs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey4 {
    /// Opener's address, network order.
    pub src: [u8; 4],
    /// Responder's address, network order.
    pub dst: [u8; 4],
    /// Opener's port, network order.
    pub sport_be: u16,
    /// Responder's port, network order.
    pub dport_be: u16,
}

impl FlowKey4 {
    /// The key of an IPv4 flow's tuple (`None` for IPv6).
    pub fn of(k: &FlowKey) -> Option<Self> {
        (k.family == family::V4).then(|| Self::narrow(k))
    }

    /// The key of `k`'s tuple read as IPv4 (the first four bytes of each address),
    /// whatever its family says: for a caller that has checked it.
    #[inline(always)]
    pub fn narrow(k: &FlowKey) -> Self {
        Self {
            src: [k.src[0], k.src[1], k.src[2], k.src[3]],
            dst: [k.dst[0], k.dst[1], k.dst[2], k.dst[3]],
            sport_be: k.sport_be,
            dport_be: k.dport_be,
        }
    }

    /// The tuple, as a [`FlowKey`] of protocol `proto` (the table's).
    pub fn tuple(&self, proto: u8) -> FlowKey {
        let mut k = FlowKey { sport_be: self.sport_be, dport_be: self.dport_be, family: family::V4, proto, ..FlowKey::default() };
        k.src[..4].copy_from_slice(&self.src);
        k.dst[..4].copy_from_slice(&self.dst);
        k
    }
}

/// One direction of a TCP flow, as a stateful firewall tracks it (after Guido van
/// Rooij, "Real Stateful TCP Packet Filtering in IP Filter", as Linux conntrack does).
/// Sequence numbers are host order and compared modulo 2^32.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpDir {
    /// The number after the highest in-window segment this side sent (its SND.NXT as
    /// far as the firewall knows).
    pub end: u32,
    /// The highest number this side may send: the other side's latest acknowledgement
    /// plus its window.
    pub maxend: u32,
    /// The largest window this side advertised, scaled.
    pub maxwin: u32,
    /// The latest acknowledgement number this side sent in an in-window segment: the
    /// other side's next number as this side sees it.
    pub ack: u32,
    /// Window scale shift from this side's SYN (0 when none).
    pub wscale: u8,
    /// [`dir_flags`] bits.
    pub flags: u8,
    pub _pad: [u8; 2],
}

/// Value of [`map::FLOWS`], [`map::EMBRYOS`] and [`map::UDP_FLOWS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// `bpf_ktime_get_ns` of the first packet.
    pub created_ns: u64,
    /// `bpf_ktime_get_ns` of the latest packet that moved the flow.
    pub last_seen_ns: u64,
    /// The NIC the opener's packets arrive on: only there do they move the flow.
    /// [`Flow::UNBOUND`] for a flow picked up from its reply: the opener's first
    /// segment that fits binds it.
    pub ifindex: u32,
    /// One of [`flow_state`].
    pub state: u8,
    /// The row of [`map::RULES`] that opened the flow.
    pub rule: u8,
    /// [`role::bit`]s of the NICs where replies may arrive.
    pub reply_roles: u8,
    /// One of [`origin`].
    pub origin: u8,
    /// TCP only: the opener's direction.
    pub opener: TcpDir,
    /// TCP only: the responder's direction.
    pub responder: TcpDir,
}

impl Flow {
    /// [`Flow::ifindex`] of a flow whose opener's NIC is not known yet (no NIC has
    /// index 0).
    pub const UNBOUND: u32 = 0;
}

/// Key of [`map::SOURCES`]: a source prefix, the address masked to the settings'
/// source length (network order; IPv4 in the first four bytes). Aligned as
/// [`FlowKey`], for the same reason.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceKey {
    pub addr: [u8; 16],
    /// [`family`].
    pub family: u8,
    pub _pad: [u8; 7],
}

/// Value of [`map::LOG_BUDGET`] (per CPU): lines logged in the current one-second
/// window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogBudget {
    /// `bpf_ktime_get_ns` when the window began.
    pub window_ns: u64,
    pub used: u32,
    pub _pad: u32,
}

/// Value of [`map::COUNTERS`] and [`map::RULE_HITS`] (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = {
    assert!(size_of::<Iface>() == 8);
    assert!(size_of::<Settings>() == 88);
    assert!(size_of::<Config>() == 88 + 2 * size_of::<PrefixLens>() + 8 * MAX_IFINDEX as usize);
    assert!(MAX_IFINDEX.is_power_of_two(), "the kernel program bounds an ifindex by a mask");
    assert!(size_of::<SourceKey>() == 24);
    assert!(size_of::<SetBits>() == 8);
    assert!(size_of::<SetName>() == NAME_LEN + 8);
    assert!(size_of::<Rule>() == NAME_LEN + 8);
    assert!(size_of::<SetRows>() == 16);
    assert!(size_of::<Ruleset>() == 16);
    assert!(size_of::<TcpDir>() == 20);
    assert!(size_of::<LogBudget>() == 16);
    assert!(size_of::<FlowKey>() == 40);
    assert!(size_of::<FlowKey4>() == 12);
    assert!(size_of::<Flow>() == 64);
    assert!(MAX_SETS <= 16, "set masks index RuleTables::set_rows by two bytes");
    assert!(MAX_RULES <= 64, "rows are bits of a u64");
    assert!(size_of::<Counter>() == 16);
    assert!(size_of::<SetKey4>() == 8);
    assert!(size_of::<SetKey6>() == 20);
    assert!(size_of::<PrefixLens>() == 2 * MAX_PREFIX_LENS + 8 + 24 + SMALL_SET * (12 + 40));
    assert!(size_of::<Small6>() == 40);
    assert!(size_of::<Exact4>() == 52 && size_of::<Exact6>() == 104);
    assert!(verdict::DROP_BASE + 2 * verdict::DRY_RUN_OFFSET == verdict::SLOTS);
    assert!(MAX_IFACES * verdict::SLOTS <= 4096);
};

/// Index into [`map::COUNTERS`].
pub const fn counter_index(slot: u32, verdict: u32) -> u32 {
    slot * verdict::SLOTS + verdict
}

/// Entries of [`map::COUNTERS`].
pub const COUNTER_ENTRIES: u32 = MAX_IFACES * verdict::SLOTS;

#[cfg(feature = "user")]
mod pod {
    /// `aya::Pod` for each of the map types.
    macro_rules! pod {
        ($($ty:ident),+ $(,)?) => {
            // SAFETY: every type is `#[repr(C)]`, made only of integers and byte arrays, with
            // explicit padding fields, so every bit pattern is valid and none is uninitialised.
            $(unsafe impl aya::Pod for super::$ty {})+
        };
    }

    pod!(
        Iface, Settings, Config, FlowKey, FlowKey4, Flow, Counter, LogBudget, SetKey4, SetKey6, PrefixLens, SetBits, SetName, Rule, RuleTables,
        SetRows, Ruleset, SourceKey, Exact4, Exact6
    );
}

#[cfg(test)]
mod tests {
    use rand::{RngCore as _, SeedableRng as _, rngs::SmallRng};

    use super::*;

    /// An address inside a prefix at least `hint` bits long falls in the prefix's
    /// bucket, whatever its other bits: the property that lets a clear bit say "in no
    /// set".
    #[test]
    fn an_ipv6_address_is_its_halves() {
        let mut rng = SmallRng::seed_from_u64(0x0bad_cafe);
        for _ in 0..1000 {
            let a = (u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64())).to_be_bytes();
            assert_eq!(exact::octets6(exact::halves6(&a)), a);
        }
    }

    #[test]
    fn addresses_share_the_bucket_of_every_prefix_that_holds_them() {
        let mut rng = SmallRng::seed_from_u64(0x1234_5678_9abc_def0);
        let mut next = move || rng.next_u64();
        for _ in 0..10_000 {
            let (a, b) = (next(), next());
            let hint = (a % 33) as u32;
            let len = hint + (b % u64::from(33 - hint)) as u32;
            let addr = a as u32;
            let network = addr & hint::mask32(len);
            assert_eq!(hint::bucket4(addr, hint), hint::bucket4(network, hint), "{addr:#x} in /{len}, hint {hint}");
            assert!(hint::bucket4(addr, hint) < hint::WORDS * 64);
            let mut a6 = [0u8; 16];
            a6[..8].copy_from_slice(&a.to_be_bytes());
            a6[8..].copy_from_slice(&b.to_be_bytes());
            let hint6 = (b % 129) as u32;
            let len6 = hint6 + (a % u64::from(129 - hint6)) as u32;
            let n6 = hint::mask6(&a6, len6);
            assert_eq!(hint::bucket6(&a6, hint6), hint::bucket6(&n6, hint6));
            // The words' mask the kernel reads is the mask `mask6` applies.
            let masked = hint::mask6(&a6, hint6);
            let words = hint::mask6_words(hint6);
            for w in 0..4 {
                let word = u32::from_be_bytes([a6[4 * w], a6[4 * w + 1], a6[4 * w + 2], a6[4 * w + 3]]) & words[w];
                assert_eq!(word.to_be_bytes(), masked[4 * w..4 * w + 4], "/{hint6}, word {w}");
            }
            assert!(hint::bucket6(&a6, hint6) < hint::WORDS * 64);
        }
        assert_eq!(hint::mask6(&[0xff; 16], 12)[..3], [0xff, 0xf0, 0]);
        assert_eq!(hint::mask32(0), 0);
        assert_eq!(hint::mask32(32), u32::MAX);
    }

    #[test]
    fn verdict_names_cover_every_slot_once() {
        let mut seen = [None; verdict::SLOTS as usize];
        for v in 0..verdict::SLOTS {
            seen[v as usize] = verdict::name(v);
        }
        assert_eq!(verdict::name(verdict::PASS_RULE), Some(("pass", "rule")));
        assert_eq!(verdict::name(verdict::PASS_UNATTACHED), Some(("pass", "unattached")));
        assert_eq!(verdict::name(verdict::DROP_NO_RULE), Some(("drop", "no_rule")));
        assert_eq!(verdict::name(verdict::DROP_UNPOLICED), Some(("drop", "unpoliced")));
        assert_eq!(verdict::name(verdict::DROP_SPOOFED + verdict::DRY_RUN_OFFSET), Some(("would_drop", "spoofed")));
        assert_eq!(verdict::name(verdict::PASS_RELATED), Some(("pass", "related")));
        assert_eq!(verdict::name(7), None);
        assert_eq!(verdict::name(verdict::DROP_UNPOLICED + 1), None);
        assert_eq!(verdict::name(verdict::SLOTS), None);
        // Every named slot has a distinct name.
        for a in 0..seen.len() {
            for b in a + 1..seen.len() {
                if seen[a].is_some() {
                    assert_ne!(seen[a], seen[b], "slots {a} and {b}");
                }
            }
        }
        let named = seen.iter().filter(|s| s.is_some()).count();
        assert_eq!(named, 7 + 5 + 5);
    }

    #[test]
    fn drops_are_drops_and_dry_run_passes() {
        assert!(verdict::is_drop(verdict::DROP_MALFORMED));
        assert!(!verdict::is_drop(verdict::PASS_REPLY));
        assert!(!verdict::is_drop(verdict::DROP_MALFORMED + verdict::DRY_RUN_OFFSET));
    }

    #[test]
    fn default_settings_enforce_on_generation_zero() {
        let s = Settings::default();
        assert_eq!((s.flags, s.rules_at), (0, 0));
        assert_eq!(s.udp_timeout_ns, 120 * NS_PER_SEC);
    }

    #[test]
    fn edge_sets_are_the_low_bits() {
        assert_eq!(set::EDGE_BITS, 0b1111);
        assert_eq!(set::EDGE_NAMES[set::INTERNAL_EDGE as usize], "internal-edge");
        assert_eq!((proto_index(6), proto_index(17), proto_index(1)), (Some(0), Some(1), None));
    }

    #[test]
    fn counter_index_is_dense_per_nic() {
        assert_eq!(counter_index(0, 0), 0);
        assert_eq!(counter_index(1, verdict::DROP_NO_RULE), verdict::SLOTS + 8);
        assert_eq!(counter_index(MAX_IFACES - 1, verdict::SLOTS - 1), COUNTER_ENTRIES - 1);
    }

    #[test]
    fn role_bits_are_distinct() {
        let roles = [role::OUTSIDE, role::EDGE, role::HOST];
        for (i, a) in roles.iter().enumerate() {
            assert_ne!(role::bit(*a), 0, "role {a} has a bit");
            for b in &roles[i + 1..] {
                assert_eq!(role::bit(*a) & role::bit(*b), 0, "roles {a} and {b}");
            }
        }
    }
}
