//! The packet generator of the differential run: seeded, so a run replays, and fed
//! with one policy's rows and address sets, so that its traffic hits them.
//!
//! Contract:
//! - [`Generator::new`]`(seed, policy, sets)`: the same three give the same frames.
//! - Addresses come from a pool derived from the sets (every host entry; for every
//!   prefix its first, an inner and its last address and the addresses just before
//!   and after it, within the documentation ranges), the test plan's addresses and a
//!   few strangers. Ports come from the
//!   rows (both ends of each port or range, one past each end, a middle), the
//!   vendor's ports and a few drawn at random once.
//! - Frames of every kind, mixed:
//!   - well-formed packets of any kind the policy tells apart: both families, 0-3 VLAN
//!     tags, IPv4 options, IPv6 extension chains, first and later fragments,
//!     TCP/UDP/ICMP/other, cut upper-layer headers, on every NIC;
//!   - TCP connections a row opens (or none does), peers as sources where a row
//!     names them: handshakes with random ISNs and realistic windows, SYNs with and
//!     without the window scale option (and options the walk must skip), SYN-ACKs
//!     acknowledging the wrong number, data, FIN, RST and ACK in and out of the
//!     window, RSTs at the exact number, blind RSTs and SYNs with random numbers,
//!     window updates, new connections on the tuple of a closed or open one, now and
//!     then behind IPv4 options, an IPv6 extension header or as a first fragment;
//!   - UDP flows of the rows: datagrams, replies, replies from and to other ports and
//!     on other NICs, datagrams to a range's edges and one past;
//!   - ICMP errors (v4 types 3/11/12, v6 1-4, and some non-errors) quoting a packet
//!     of a live connection in either direction, of a UDP flow, of no connection, of
//!     the other family, cut short, or a later fragment;
//!   - mutations of any of these: truncation, a flipped bit, a rewritten length
//!     field, random bytes after the Ethernet header; or, unmutated, Ethernet padding
//!     or a trailer after the IP packet.
//! - Bounded: at most [`MAX_TCP`] TCP and [`MAX_UDP`] UDP connections at a time,
//!   client ports from a 256-port range, addresses and ports from fixed pools, so the
//!   tuples a run opens stay far below the state tables (the run checks), and no LRU
//!   eviction or timeout enters the comparison.
//! - A connection keeps its opener's NIC and its responder's NIC (the model treats
//!   each role as one NIC); some of its frames go to a random NIC on purpose.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use edge_filter::{
    AddressSets, Policy, Prefix,
    rules::{Endpoint, Proto, Row},
};
use edge_filter_common::set::EDGE_BITS;
use rand::{Rng, SeedableRng, rngs::SmallRng, seq::IndexedRandom};

use crate::{
    Nic,
    packet::{self, L4, Pkt, TPID_8021AD, TPID_8021Q, flags::*},
    plan::*,
};

/// One generated frame and the NIC it arrives on.
#[derive(Clone, Debug)]
pub struct Sample {
    pub frame: Vec<u8>,
    pub nic: Nic,
    /// What it is, for reports.
    pub what: &'static str,
    /// Mutated after it was built.
    pub mutated: bool,
}

/// Live TCP connections and UDP flows at a time.
pub const MAX_TCP: usize = 48;
pub const MAX_UDP: usize = 24;
/// Client ports: `CLIENT_PORT_BASE` and the 255 above it.
const CLIENT_PORT_BASE: u16 = 30_000;

/// One side of a TCP connection as its endpoint sees it.
#[derive(Clone, Copy, Debug)]
struct Side {
    isn: u32,
    /// The number after the last byte it sent.
    nxt: u32,
    /// The window field it advertises.
    win: u16,
    /// The window scale option of its SYN.
    wscale: Option<u8>,
    fin: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Syn,
    SynAck,
    Ack,
    Open,
}

/// A TCP connection of the pool.
#[derive(Clone, Copy, Debug)]
struct Tcp {
    ends: Ends,
    c: Side,
    s: Side,
    phase: Phase,
    /// Whether the client sent the last segment of the open connection: a side often
    /// sends several in a row, which is when the window it was given matters.
    client_last: bool,
}

impl Tcp {
    /// The window `side` advertises, in bytes: scaled only when both SYNs carried the
    /// option (RFC 7323 §2.2).
    fn window_bytes(&self, client: bool) -> u32 {
        let side = if client { self.c } else { self.s };
        let shift = match (self.c.wscale, self.s.wscale) {
            (Some(_), Some(_)) => side.wscale.unwrap_or(0).min(14),
            _ => 0,
        };
        u32::from(side.win) << shift
    }
}

/// The ends of a flow, and the NIC each one's packets arrive on: all a UDP flow of the
/// pool is.
#[derive(Clone, Copy, Debug)]
struct Ends {
    client: (IpAddr, u16),
    server: (IpAddr, u16),
    opener_nic: Nic,
    responder_nic: Nic,
}

/// One TCP segment of a connection, before it is built.
struct Seg {
    from_client: bool,
    flags: u8,
    seq: u32,
    ack: u32,
    payload: usize,
    options: Vec<u8>,
    what: &'static str,
}

pub struct Generator {
    rng: SmallRng,
    sets: AddressSets,
    rows: Vec<Row>,
    v4: Vec<IpAddr>,
    v6: Vec<IpAddr>,
    ports: Vec<u16>,
    tcp: Vec<Tcp>,
    udp: Vec<Ends>,
}

const FLAGS: [u8; 8] = [SYN, SYN_ACK, ACK, RST, RST_ACK, FIN_ACK, ACK | PSH, SYN | FIN];
const ICMP4: [u8; 7] = [3, 11, 12, 0, 8, 5, 13];
const ICMP6: [u8; 11] = [1, 2, 3, 4, 128, 129, 133, 134, 135, 136, 137];
/// ICMP errors as routers send them: (type, code).
const ICMP4_ERRORS: [(u8, u8); 8] = [(3, 0), (3, 1), (3, 3), (3, 4), (3, 13), (11, 0), (11, 1), (12, 0)];
const ICMP6_ERRORS: [(u8, u8); 8] = [(1, 0), (1, 1), (1, 4), (2, 0), (3, 0), (3, 1), (4, 0), (4, 1)];
/// Window fields endpoints advertise: Linux's and Windows' defaults, scaled ones,
/// small and zero windows.
const WINDOWS: [u16; 11] = [64240, 65535, 29200, 502, 8192, 16384, 1024, 251, 1, 0, 63443];
/// Window scale shifts: the common ones, the maximum, and 15 (taken as 14).
const WSCALES: [u8; 9] = [0, 1, 2, 7, 7, 8, 9, 14, 15];
/// Ports besides the rows': the vendor's and their neighbours, and common services.
const PORTS: [u16; 14] = [5269, 5268, 5270, 23456, 23455, 23457, 22, 443, 53, 3478, 67, 68, 546, 547];

/// Addresses in and around a prefix: the address of a host entry; a network's first,
/// an inner and its last address, and the one before and after it.
fn around(prefix: Prefix) -> Vec<IpAddr> {
    if prefix.is_host() {
        return vec![prefix.addr()];
    }
    match prefix.addr() {
        IpAddr::V4(a) => {
            let net = u32::from(a);
            let last = net | (u32::MAX >> prefix.len());
            [net, net.wrapping_add(6), last, net.wrapping_sub(1), last.wrapping_add(1)].map(|n| IpAddr::V4(n.into())).to_vec()
        }
        IpAddr::V6(a) => {
            let net = u128::from(a);
            let last = net | (u128::MAX >> prefix.len());
            [net, net.wrapping_add(0x70), last, net.wrapping_sub(1), last.wrapping_add(1)].map(|n| IpAddr::V6(n.into())).to_vec()
        }
    }
}

impl Generator {
    pub fn new(seed: u64, policy: &Policy, sets: &AddressSets) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut addrs = vec![PARTNER4, PARTNER6, FRONTEND4, FRONTEND6, ACCESS4, ACCESS6, ACCESS_NET4, ACCESS_NET6, INTERNAL4, INTERNAL6];
        // Strangers: in no set of the plan and in no edge set (only a random peer set
        // of a short prefix, 198.18.0.0/15 or 2001:db8::/32, holds them).
        addrs.extend([
            IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(198, 19, 0, 2)),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1)),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 2)),
        ]);
        for (prefix, _) in sets.iter() {
            addrs.extend(around(prefix));
        }
        // Frames never leave the test's namespace, but documentation ranges only, as
        // everywhere (around 0.0.0.0/0 lie 0.0.0.0 and 255.255.255.255).
        let docs: Vec<Prefix> = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "198.18.0.0/15", "2001:db8::/32"]
            .iter()
            .map(|p| p.parse().expect("a documentation prefix"))
            .collect();
        addrs.retain(|a| docs.iter().any(|d| d.contains(*a)));
        addrs.sort();
        addrs.dedup();
        let (v4, v6) = addrs.into_iter().partition(IpAddr::is_ipv4);
        let rows = policy.rules.rows().to_vec();
        let mut ports: Vec<u16> = PORTS.to_vec();
        for r in &rows {
            let (lo, hi) = (r.ports.lo(), r.ports.hi());
            ports.extend([lo, hi, lo - 1, hi.wrapping_add(1), lo + (hi - lo) / 2]);
        }
        ports.extend((0..4).map(|_| rng.random::<u16>()));
        ports.sort_unstable();
        ports.dedup();
        Self { rng, sets: sets.clone(), rows, v4, v6, ports, tcp: Vec::new(), udp: Vec::new() }
    }

    fn addr(&mut self, v6: bool) -> IpAddr {
        *(if v6 { &self.v6 } else { &self.v4 }).choose(&mut self.rng).expect("non-empty pool")
    }

    fn port(&mut self) -> u16 {
        *self.ports.choose(&mut self.rng).expect("non-empty pool")
    }

    fn client_port(&mut self) -> u16 {
        // Now and then a well-known port: a source port proves nothing.
        if self.rng.random_ratio(1, 10) { self.port() } else { CLIENT_PORT_BASE + self.rng.random_range(0..256) }
    }

    fn nic(&mut self) -> Nic {
        match self.rng.random_range(0..10) {
            0..4 => Nic::Outside,
            4..7 => Nic::Edge,
            7..9 => Nic::Host,
            _ => Nic::Unattached,
        }
    }

    fn is_edge(&self, a: IpAddr) -> bool {
        self.sets.lookup(a) & EDGE_BITS != 0
    }

    /// Pool addresses of a family that `ep` matches (only ones in no edge set when
    /// `not_edge`: an edge source on an outside or host NIC is spoofed).
    fn candidates(&self, v6: bool, ep: Endpoint, not_edge: bool) -> Vec<IpAddr> {
        let pool = if v6 { &self.v6 } else { &self.v4 };
        pool.iter().copied().filter(|a| ep.matches(self.sets.lookup(*a)) && !(not_edge && self.is_edge(*a))).collect()
    }

    /// A source and destination for a flow of `row`, if the pool holds a pair.
    fn row_endpoints(&mut self, row: &Row) -> Option<(IpAddr, IpAddr)> {
        let from_edge = row.opens_from_edge();
        // "any" towards the outside is mostly a partner, not another edge address.
        let dst_not_edge = row.destination == Endpoint::Any && self.rng.random_ratio(4, 5);
        let pairs: Vec<(Vec<IpAddr>, Vec<IpAddr>)> = [false, true]
            .into_iter()
            .map(|v6| {
                let dst = self.candidates(v6, row.destination, dst_not_edge);
                let dst = if dst.is_empty() { self.candidates(v6, row.destination, false) } else { dst };
                (self.candidates(v6, row.source, !from_edge), dst)
            })
            .filter(|(s, d)| !s.is_empty() && !d.is_empty())
            .collect();
        let (src, dst) = pairs.choose(&mut self.rng)?;
        Some((*src.choose(&mut self.rng)?, *dst.choose(&mut self.rng)?))
    }

    /// A destination port for a flow of `row`: an end of its range, its middle, or one
    /// past an end.
    fn row_port(&mut self, row: &Row) -> u16 {
        let (lo, hi) = (row.ports.lo(), row.ports.hi());
        match self.rng.random_range(0..10) {
            0..3 => lo,
            3..6 => hi,
            6..9 => lo + (hi - lo) / 2,
            _ if self.rng.random_bool(0.5) => hi.wrapping_add(1),
            _ => lo - 1,
        }
    }

    /// The ends of a new flow: of a row of `proto` mostly, of random addresses and
    /// ports now and then.
    fn flow(&mut self, proto: Proto) -> Ends {
        let rows: Vec<Row> = self.rows.iter().filter(|r| r.proto == proto).cloned().collect();
        let row = if self.rng.random_ratio(1, 10) { None } else { rows.choose(&mut self.rng).cloned() };
        let found = row.as_ref().and_then(|r| Some((self.row_endpoints(r)?, self.row_port(r), r.opens_from_edge())));
        let ((src, dst), dport, from_edge) = match found {
            Some(f) => f,
            None => {
                let v6 = self.rng.random_bool(0.5);
                let from_edge = self.rng.random_bool(0.5);
                ((self.addr(v6), self.addr(v6)), self.port(), from_edge)
            }
        };
        let partner_nic = if self.rng.random_ratio(1, 4) { Nic::Host } else { Nic::Outside };
        let (opener_nic, responder_nic) = if from_edge { (Nic::Edge, partner_nic) } else { (partner_nic, Nic::Edge) };
        Ends { client: (src, self.client_port()), server: (dst, dport), opener_nic, responder_nic }
    }

    fn side(&mut self) -> Side {
        let isn = self.rng.random();
        Side {
            isn,
            nxt: isn,
            win: *WINDOWS.choose(&mut self.rng).expect("non-empty"),
            wscale: self.rng.random_bool(0.7).then(|| *WSCALES.choose(&mut self.rng).expect("non-empty")),
            fin: false,
        }
    }

    /// A SYN's options, as Linux and Windows lay them out, carrying `wscale` (or not),
    /// and some the option walk must skip or stop at.
    fn syn_options(&mut self, wscale: Option<u8>) -> Vec<u8> {
        let mss = [2u8, 4, 0x05, 0xb4];
        let ts = [8u8, 10, 0, 1, 2, 3, 0, 0, 0, 0];
        let mut o = Vec::new();
        match (wscale, self.rng.random_range(0..10)) {
            (Some(s), 0..5) => {
                o.extend(mss);
                o.extend([4, 2]);
                o.extend(ts);
                o.extend([1, 3, 3, s]);
            }
            (Some(s), 5..8) => {
                o.extend(mss);
                o.extend([1, 3, 3, s, 1, 1, 4, 2]);
            }
            (Some(s), 8) => o.extend([3, 3, s]),
            // The twelfth option, the last the walk reads.
            (Some(s), _) => {
                o.extend([1; 11]);
                o.extend([3, 3, s]);
            }
            (None, 0..6) => {
                o.extend(mss);
                o.extend([4, 2]);
                o.extend(ts);
            }
            (None, 6..8) => {}
            // A window scale of the wrong length; one after an option of length 0.
            (None, 8) => o.extend(if self.rng.random_bool(0.5) { [3u8, 2, 7].as_slice() } else { [2u8, 0, 3, 3, 7].as_slice() }),
            // A window scale past the twelve options the walk reads.
            (None, _) => {
                o.extend([1; 12]);
                o.extend([3, 3, 7]);
            }
        }
        o
    }

    /// A well-formed packet of any kind.
    fn packet(&mut self) -> Pkt {
        let v6 = self.rng.random_bool(0.5);
        let (src, dst) = (self.addr(v6), self.addr(v6));
        let mut p = match self.rng.random_range(0..20) {
            0..12 => {
                let flags = if self.rng.random_ratio(1, 8) { self.rng.random::<u8>() & 0x3f } else { *FLAGS.choose(&mut self.rng).unwrap() };
                let (sport, dport) = (self.port(), self.port());
                let p = packet::tcp(src, dst, sport, dport, flags)
                    .seq_ack(self.rng.random(), self.rng.random())
                    .window(*WINDOWS.choose(&mut self.rng).unwrap());
                if flags & SYN != 0 && self.rng.random_bool(0.5) {
                    let ws = self.rng.random_bool(0.6).then(|| *WSCALES.choose(&mut self.rng).unwrap());
                    let o = self.syn_options(ws);
                    p.tcp_options(o)
                } else {
                    p
                }
            }
            12..14 => {
                let (sport, dport) = (self.port(), self.port());
                packet::udp(src, dst, sport, dport)
            }
            // A DHCP server's answer (or one the wrong way round), which a host NIC
            // under `host-dhcp` lets through.
            14 => {
                let ((server, client), dst) = if v6 {
                    ((547, 546), *[dst, "fe80::20".parse().unwrap(), "ff02::1:2".parse().unwrap()].choose(&mut self.rng).unwrap())
                } else {
                    ((67, 68), *[dst, Ipv4Addr::BROADCAST.into()].choose(&mut self.rng).unwrap())
                };
                if self.rng.random_ratio(1, 5) { packet::udp(src, dst, client, server) } else { packet::udp(src, dst, server, client) }
            }
            15..19 => {
                let kind = if v6 { *ICMP6.choose(&mut self.rng).unwrap() } else { *ICMP4.choose(&mut self.rng).unwrap() };
                packet::icmp(src, dst, kind, self.rng.random_range(0..5)).ttl(if self.rng.random_bool(0.7) { 255 } else { 64 })
            }
            _ => Pkt::new(src, dst, L4::Raw { proto: *[47u8, 50, 132, 255].choose(&mut self.rng).unwrap(), bytes: vec![0; 8] }),
        };
        p = p.payload(self.rng.random_range(0..64));
        p = self.tags(p);
        if v6 {
            let n = if self.rng.random_bool(0.6) { 0 } else { self.rng.random_range(0..10) };
            for _ in 0..n {
                p = match self.rng.random_range(0..5) {
                    0 => p.fragment(if self.rng.random_bool(0.5) { 0 } else { self.rng.random_range(1..8191) }, self.rng.random_bool(0.5)),
                    k => p.ext(*[0u8, 43, 60, 51].get(k - 1).unwrap(), 8 * self.rng.random_range(1..4)),
                };
            }
        } else {
            if self.rng.random_ratio(1, 4) {
                let len = 4 * self.rng.random_range(1..11);
                p = p.options(vec![1; len]);
            }
            if self.rng.random_ratio(1, 6) {
                p = p.fragment(if self.rng.random_bool(0.5) { 0 } else { self.rng.random_range(1..8191) }, self.rng.random_bool(0.5));
            }
        }
        if self.rng.random_ratio(1, 10) {
            p = p.cut_l4(self.rng.random_range(0..24));
        }
        p
    }

    /// What the network may put around a flow's segment: now and then IPv4 options or
    /// an IPv6 destination options header, or a first fragment (whose upper-layer
    /// header is whole: under `fragments = pass` it moves the flow like any segment).
    fn ip_extras(&mut self, mut p: Pkt) -> Pkt {
        if self.rng.random_ratio(1, 12) {
            p = if p.src.is_ipv6() { p.ext(60, 8) } else { p.options(vec![1; 8]) };
        }
        if self.rng.random_ratio(1, 20) {
            p = p.fragment(0, true);
        }
        p
    }

    /// 0-3 VLAN tags, mostly none.
    fn tags(&mut self, mut p: Pkt) -> Pkt {
        for _ in 0..self.rng.random_range(0..4).min(if self.rng.random_bool(0.7) { 0 } else { 3 }) {
            let tpid = if self.rng.random_bool(0.5) { TPID_8021Q } else { TPID_8021AD };
            p = p.tag(tpid, self.rng.random_range(1..4095));
        }
        p
    }

    /// The next segment of a TCP connection from the pool (opening one when needed).
    fn tcp_step(&mut self) -> Sample {
        if self.tcp.len() < MAX_TCP / 2 || self.rng.random_ratio(1, 25) {
            let ends = self.flow(Proto::Tcp);
            let (c, s) = (self.side(), self.side());
            // Now and then one that opened through another node (a firewall pair's
            // peer): the first segments seen are mid-stream, which the Edge's side
            // picks up.
            let phase = if self.rng.random_ratio(1, 6) { Phase::Open } else { Phase::Syn };
            let conn = Tcp { ends, c, s, phase, client_last: true };
            if self.tcp.len() >= MAX_TCP {
                let i = self.rng.random_range(0..self.tcp.len());
                self.tcp[i] = conn;
            } else {
                self.tcp.push(conn);
            }
        }
        let i = self.rng.random_range(0..self.tcp.len());
        let mut c = self.tcp[i];
        let seg = self.segment(&mut c);
        self.tcp[i] = c;
        let e = c.ends;
        let (src, dst, mut nic) = if seg.from_client { (e.client, e.server, e.opener_nic) } else { (e.server, e.client, e.responder_nic) };
        if self.rng.random_ratio(1, 15) {
            // The wrong NIC: the other side's (asymmetric routing), or any.
            let other = if seg.from_client { e.responder_nic } else { e.opener_nic };
            nic = if self.rng.random_bool(0.5) { other } else { self.nic() };
        }
        let win = if seg.from_client { c.c.win } else { c.s.win };
        let mut p = packet::tcp(src.0, dst.0, src.1, dst.1, seg.flags).seq_ack(seg.seq, seg.ack).window(win).payload(seg.payload);
        if !seg.options.is_empty() {
            p = p.tcp_options(seg.options);
        } else if self.rng.random_ratio(1, 3) {
            // Timestamps, as on most segments of a Linux connection.
            p = p.tcp_options(vec![1, 1, 8, 10, 0, 0, 1, 0, 0, 0, 2, 0]);
        }
        p = self.ip_extras(p);
        if self.rng.random_ratio(1, 12) {
            p = self.tags(p);
        }
        Sample { frame: p.build(), nic, what: seg.what, mutated: false }
    }

    fn payload_len(&mut self) -> usize {
        *[0usize, 0, 1, 20, 100, 536, 1200, 1400].choose(&mut self.rng).expect("non-empty")
    }

    /// The SYN that opens (or reopens) `c` with fresh numbers.
    fn syn(&mut self, c: &mut Tcp) -> Seg {
        c.c = self.side();
        c.c.nxt = c.c.isn.wrapping_add(1);
        c.s = self.side();
        c.phase = Phase::SynAck;
        let options = self.syn_options(c.c.wscale);
        Seg { from_client: true, flags: SYN, seq: c.c.isn, ack: 0, payload: 0, options, what: "tcp syn" }
    }

    fn segment(&mut self, c: &mut Tcp) -> Seg {
        let roll = self.rng.random_range(0..100);
        let seg = |from_client, flags, seq, ack, what| Seg { from_client, flags, seq, ack, payload: 0, options: Vec::new(), what };
        match c.phase {
            Phase::Syn => self.syn(c),
            Phase::SynAck => match roll {
                0..70 => {
                    c.s.nxt = c.s.isn.wrapping_add(1);
                    c.phase = Phase::Ack;
                    let options = self.syn_options(c.s.wscale);
                    Seg { options, ..seg(false, SYN_ACK, c.s.isn, c.c.nxt, "tcp syn-ack") }
                }
                70..80 => {
                    let ack = c.c.nxt.wrapping_add(*[1u32, u32::MAX, self.rng.random()].choose(&mut self.rng).unwrap());
                    let options = self.syn_options(c.s.wscale);
                    Seg { options, ..seg(false, SYN_ACK, self.rng.random(), ack, "tcp syn-ack, wrong ack") }
                }
                80..85 => {
                    c.phase = Phase::Syn;
                    seg(false, RST_ACK, 0, c.c.nxt, "tcp refused")
                }
                85..90 => {
                    let ack = self.rng.random();
                    seg(false, *[RST, RST_ACK].choose(&mut self.rng).unwrap(), self.rng.random(), ack, "tcp blind rst in handshake")
                }
                90..95 => {
                    let options = self.syn_options(c.c.wscale);
                    Seg { options, ..seg(true, SYN, c.c.isn, 0, "tcp syn again") }
                }
                _ => seg(true, SYN, self.rng.random(), 0, "tcp syn, other isn"),
            },
            Phase::Ack => match roll {
                0..75 => {
                    let payload = if self.rng.random_ratio(1, 3) { self.payload_len() } else { 0 };
                    let s = Seg { payload, ..seg(true, if payload > 0 { ACK | PSH } else { ACK }, c.c.nxt, c.s.nxt, "tcp handshake ack") };
                    c.c.nxt = c.c.nxt.wrapping_add(payload as u32);
                    c.phase = Phase::Open;
                    s
                }
                75..83 => {
                    let ack = c.s.nxt.wrapping_add(*[1u32, u32::MAX, self.rng.random()].choose(&mut self.rng).unwrap());
                    seg(true, ACK, c.c.nxt, ack, "tcp handshake ack, wrong ack")
                }
                83..88 => seg(true, ACK, c.c.nxt.wrapping_add(1), c.s.nxt, "tcp handshake ack, wrong seq"),
                88..92 => {
                    c.phase = Phase::Syn;
                    seg(true, RST, c.c.nxt, 0, "tcp rst in handshake")
                }
                92..96 => {
                    let options = self.syn_options(c.s.wscale);
                    Seg { options, ..seg(false, SYN_ACK, c.s.isn, c.c.nxt, "tcp syn-ack again") }
                }
                _ => {
                    let options = self.syn_options(c.s.wscale);
                    Seg { options, ..seg(false, SYN_ACK, self.rng.random(), c.c.nxt, "tcp syn-ack, other isn") }
                }
            },
            Phase::Open => self.open_segment(c, roll),
        }
    }

    /// A segment of an established connection.
    fn open_segment(&mut self, c: &mut Tcp, roll: u32) -> Seg {
        let from_client = if self.rng.random_ratio(2, 3) { c.client_last } else { !c.client_last };
        c.client_last = from_client;
        let (x, y) = if from_client { (c.c, c.s) } else { (c.s, c.c) };
        let their_window = c.window_bytes(!from_client).max(1);
        let seg = |flags, seq, ack, what| Seg { from_client, flags, seq, ack, payload: 0, options: Vec::new(), what };
        let mut s = match roll {
            0..32 => {
                let payload = self.payload_len();
                let s = Seg { payload, ..seg(if payload > 0 { ACK | PSH } else { ACK }, x.nxt, y.nxt, "tcp data") };
                self.advance(c, from_client, payload as u32);
                s
            }
            32..36 => {
                let back = self.rng.random_range(1..=2000);
                Seg { payload: 100, ..seg(ACK | PSH, x.nxt.wrapping_sub(back), y.nxt, "tcp retransmission") }
            }
            36..41 => {
                let off = self.rng.random_range(their_window.saturating_add(1).min(1 << 30)..=1 << 31);
                let seq = if self.rng.random_bool(0.5) { x.nxt.wrapping_add(off) } else { x.nxt.wrapping_sub(off) };
                Seg { payload: 100, ..seg(ACK | PSH, seq, y.nxt, "tcp data out of window") }
            }
            41..45 => seg(ACK, x.nxt, y.nxt.wrapping_add(self.rng.random_range(1..200_000)), "tcp ack of unsent data"),
            45..48 => {
                // Just behind, around conntrack's 66,000-byte floor of the ack window,
                // or far behind.
                let back = match self.rng.random_range(0..4) {
                    0 => self.rng.random_range(1..2_000),
                    1 => self.rng.random_range(2_000..66_000),
                    2 => self.rng.random_range(66_000..70_000),
                    _ => self.rng.random_range(70_000..1 << 30),
                };
                seg(ACK, x.nxt, y.nxt.wrapping_sub(back), "tcp old ack")
            }
            48..55 => {
                let s = seg(FIN_ACK, x.nxt, y.nxt, "tcp fin");
                self.advance(c, from_client, 1);
                if from_client {
                    c.c.fin = true
                } else {
                    c.s.fin = true
                }
                s
            }
            55..59 => {
                c.phase = Phase::Syn;
                seg(*[RST, RST_ACK].choose(&mut self.rng).unwrap(), x.nxt, y.nxt, "tcp rst, exact")
            }
            59..64 => {
                let off = self.rng.random_range(1..=their_window.min(1 << 30));
                seg(*[RST, RST_ACK].choose(&mut self.rng).unwrap(), x.nxt.wrapping_add(off), y.nxt, "tcp rst in window")
            }
            64..68 => {
                let ack = self.rng.random();
                seg(*[RST, RST_ACK].choose(&mut self.rng).unwrap(), self.rng.random(), ack, "tcp blind rst")
            }
            68..72 => seg(SYN, self.rng.random(), 0, "tcp blind syn"),
            72..75 => {
                let ack = self.rng.random();
                Seg { from_client: false, ..seg(SYN_ACK, self.rng.random(), ack, "tcp blind syn-ack") }
            }
            75..80 => {
                let win = *WINDOWS.choose(&mut self.rng).expect("non-empty");
                if from_client {
                    c.c.win = win
                } else {
                    c.s.win = win
                }
                seg(ACK, x.nxt, y.nxt, "tcp window update")
            }
            80..84 => seg(ACK, x.nxt.wrapping_sub(1), y.nxt, "tcp keepalive"),
            84..90 if c.c.fin && c.s.fin => self.syn(c),
            84..87 => seg(FIN_ACK, x.nxt, y.nxt, "tcp fin again"),
            // The client starts over on the same port (it took an RST, or gave up).
            87..90 => Seg { what: "tcp syn on an open tuple", ..self.syn(c) },
            _ => {
                let flags = self.rng.random::<u8>() & 0x3f;
                Seg { payload: 20, ..seg(flags, x.nxt, y.nxt, "tcp in-window, random flags") }
            }
        };
        if s.flags & SYN != 0 && s.options.is_empty() && self.rng.random_bool(0.5) {
            let ws = self.rng.random_bool(0.6).then(|| *WSCALES.choose(&mut self.rng).unwrap());
            s.options = self.syn_options(ws);
        }
        s
    }

    fn advance(&mut self, c: &mut Tcp, client: bool, by: u32) {
        let side = if client { &mut c.c } else { &mut c.s };
        side.nxt = side.nxt.wrapping_add(by);
    }

    /// A datagram of a UDP flow from the pool (opening one when needed), or of its
    /// reply direction.
    fn udp_step(&mut self) -> Sample {
        if self.udp.len() < MAX_UDP / 2 || self.rng.random_ratio(1, 25) {
            let u = self.flow(Proto::Udp);
            if self.udp.len() >= MAX_UDP {
                let i = self.rng.random_range(0..self.udp.len());
                self.udp[i] = u;
            } else {
                self.udp.push(u);
            }
        }
        let u = *self.udp.choose(&mut self.rng).expect("non-empty");
        let neighbour = |p: u16, up: bool| if up { p.wrapping_add(1) } else { p.wrapping_sub(1) };
        let up = self.rng.random_bool(0.5);
        let (src, dst, nic, what) = match self.rng.random_range(0..100) {
            0..40 => (u.client, u.server, u.opener_nic, "udp"),
            40..75 => (u.server, u.client, u.responder_nic, "udp reply"),
            75..78 => (u.server, u.client, u.opener_nic, "udp reply on the opener's NIC"),
            78..80 => (u.server, u.client, self.nic(), "udp reply, any NIC"),
            80..85 => ((u.server.0, neighbour(u.server.1, up)), u.client, u.responder_nic, "udp reply from another port"),
            85..90 => (u.server, (u.client.0, neighbour(u.client.1, up)), u.responder_nic, "udp reply to another port"),
            90..95 => (u.client, (u.server.0, neighbour(u.server.1, up)), u.opener_nic, "udp to a neighbouring port"),
            _ => {
                let other = self.addr(u.client.0.is_ipv6());
                ((other, u.client.1), u.server, u.opener_nic, "udp from another source")
            }
        };
        let p = packet::udp(src.0, dst.0, src.1, dst.1).payload(self.rng.random_range(0..200));
        let p = self.ip_extras(p);
        let p = if self.rng.random_ratio(1, 12) { self.tags(p) } else { p };
        Sample { frame: p.build(), nic, what, mutated: false }
    }

    /// An ICMP or ICMPv6 error quoting a packet: of a live connection (either
    /// direction), of a UDP flow, or of no flow; sometimes cut short, of the other
    /// family, or not an error at all.
    fn icmp_error(&mut self) -> Sample {
        let (quoted, toward, mut what) = match self.rng.random_range(0..10) {
            0..6 if !self.tcp.is_empty() => {
                let c = *self.tcp.choose(&mut self.rng).expect("non-empty");
                let from_client = self.rng.random_bool(0.5);
                let (src, dst, nic, x, y) = if from_client {
                    (c.ends.client, c.ends.server, c.ends.responder_nic, c.c, c.s)
                } else {
                    (c.ends.server, c.ends.client, c.ends.opener_nic, c.s, c.c)
                };
                (packet::tcp(src.0, dst.0, src.1, dst.1, ACK | PSH).seq_ack(x.nxt, y.nxt).payload(100), nic, "icmp error, tcp quote")
            }
            6..8 if !self.udp.is_empty() => {
                let u = *self.udp.choose(&mut self.rng).expect("non-empty");
                let (src, dst, nic) =
                    if self.rng.random_bool(0.5) { (u.client, u.server, u.responder_nic) } else { (u.server, u.client, u.opener_nic) };
                (packet::udp(src.0, dst.0, src.1, dst.1).payload(100), nic, "icmp error, udp quote")
            }
            _ => {
                let v6 = self.rng.random_bool(0.5);
                let (src, dst, sport, dport) = (self.addr(v6), self.addr(v6), self.port(), self.port());
                let p = if self.rng.random_bool(0.5) { packet::tcp(src, dst, sport, dport, ACK) } else { packet::udp(src, dst, sport, dport) };
                let nic = self.nic();
                (p, nic, "icmp error, quote of no flow")
            }
        };
        let mut quoted = quoted;
        let v6 = quoted.src.is_ipv6();
        if !v6 && self.rng.random_ratio(1, 8) {
            quoted = quoted.options(vec![1; 8]);
        }
        if self.rng.random_ratio(1, 12) {
            quoted = quoted.fragment(self.rng.random_range(1..100), false);
            what = "icmp error, quote of a later fragment";
        }
        // The far end answers, or a router on the way.
        let mut router = if self.rng.random_bool(0.5) { quoted.dst } else { self.addr(v6) };
        let mut to = quoted.src;
        if self.rng.random_ratio(1, 30) {
            // An error of the other family, which cannot quote this packet.
            (router, to) = (self.addr(!v6), self.addr(!v6));
            what = "icmp error of the other family";
        }
        let (kind, code) = if self.rng.random_ratio(1, 20) {
            what = "icmp non-error with a quote";
            (if router.is_ipv6() { *[128u8, 129, 135].choose(&mut self.rng).unwrap() } else { *[0u8, 8, 5].choose(&mut self.rng).unwrap() }, 0)
        } else if router.is_ipv6() {
            *ICMP6_ERRORS.choose(&mut self.rng).unwrap()
        } else {
            *ICMP4_ERRORS.choose(&mut self.rng).unwrap()
        };
        let mut p = packet::icmp_error(router, to, kind, code, &quoted);
        if self.rng.random_ratio(1, 6) {
            // Cut inside the quoted IP header or its first four transport bytes.
            let header = if v6 { 40 } else { 20 + quoted.ipv4_options.len() };
            let keep = self.rng.random_range(0..header + 4);
            if let L4::IcmpQuote { quote, .. } = &mut p.l4 {
                quote.truncate(keep);
            }
            what = "icmp error, quote cut short";
        }
        if self.rng.random_ratio(1, 12) {
            // Outer headers a router may add: IPv4 options, an IPv6 hop-by-hop header.
            p = if router.is_ipv6() { p.ext(0, 8) } else { p.options(vec![1; 4]) };
        }
        let nic = if self.rng.random_ratio(1, 8) { self.nic() } else { toward };
        let p = if self.rng.random_ratio(1, 12) { self.tags(p) } else { p };
        Sample { frame: p.build(), nic, what, mutated: false }
    }

    fn mutate(&mut self, mut frame: Vec<u8>) -> Vec<u8> {
        let len = frame.len();
        match self.rng.random_range(0..10) {
            0..4 => frame.truncate(self.rng.random_range(14..len.max(15))),
            4..7 => {
                let at = self.rng.random_range(12..len);
                frame[at] ^= 1 << self.rng.random_range(0..8);
            }
            7..9 => {
                // A length field: IPv4 IHL and total length, IPv6 payload length, a
                // TCP data offset, wherever the first IP header sits.
                let ip = 14 + 4 * (0..3).take_while(|i| matches!(frame.get(12 + 4 * i..14 + 4 * i), Some([0x81, 0x00] | [0x88, 0xa8]))).count();
                let at = *[ip, ip + 2, ip + 3, ip + 4, ip + 5, ip + 32].choose(&mut self.rng).unwrap();
                if at < len {
                    frame[at] = self.rng.random();
                }
            }
            _ => {
                for b in frame.iter_mut().skip(14) {
                    *b = self.rng.random();
                }
            }
        }
        frame
    }

    /// The next frame.
    pub fn sample(&mut self) -> Sample {
        let mut s = match self.rng.random_range(0..100) {
            0..25 => Sample { frame: self.packet().build(), nic: self.nic(), what: "packet", mutated: false },
            25..62 => self.tcp_step(),
            62..78 => self.udp_step(),
            _ => self.icmp_error(),
        };
        // Now and then to a group Ethernet address (broadcast, IPv6 all-nodes), which a
        // host NIC polices (`host-link-local`).
        if s.frame.len() >= 6 && self.rng.random_ratio(1, 12) {
            let group: [u8; 6] = if self.rng.random_bool(0.5) { [0xff; 6] } else { [0x33, 0x33, 0, 0, 0, 1] };
            s.frame[..6].copy_from_slice(&group);
        }
        if self.rng.random_ratio(1, 5) {
            s.frame = self.mutate(s.frame);
            s.mutated = true;
        } else if self.rng.random_ratio(1, 8) {
            // Bytes after the IP packet: Ethernet padding to the 60-byte minimum, or a
            // trailer. They belong to no header and to no payload.
            if s.frame.len() < 60 && self.rng.random_bool(0.5) {
                s.frame.resize(60, 0);
            } else {
                let n = self.rng.random_range(1..=16);
                s.frame.extend((0..n).map(|_| self.rng.random::<u8>()));
            }
        }
        s
    }
}
