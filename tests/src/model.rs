//! The reference model: the policy as plain Rust, written from the design and the
//! README's policy and state sections, not from the kernel code. Differential tests
//! run every frame through both and compare verdicts; the model is kept small and
//! obviously right instead of fast.
//!
//! Given a frame, the ingress NIC's role (`None`: a NIC without one), the address
//! sets and the policy (its rule table included), [`Model::judge`] returns the verdict
//! (a `edge_filter_common::verdict` code, dry-run applied) and updates the model's own
//! state tables as the kernel's must change. Each role is one NIC (as in the test
//! harness), so a flow's NIC is its opener's role. Timeouts and LRU eviction are not
//! modelled: differential runs keep tables larger than their traffic and timeouts
//! longer than the run.

use std::{collections::HashMap, net::IpAddr};

use edge_filter_common::{
    ipproto::{ICMP, ICMPV6, TCP, UDP},
    set::EDGE_BITS,
    tcp_flags::{ACK, FIN, RST, SYN},
    verdict as v,
};

use edge_filter::{
    addr::AddressSets,
    policy::{Fate, LinkScope, Policy, Role},
    rules::Proto,
};

/// What the model knows of a frame.
#[derive(Debug)]
enum Frame {
    Malformed,
    /// An IPv6 first fragment without its whole header chain (RFC 7112).
    IncompleteFirstFragment,
    Arp,
    NotIp,
    Ip(Ip),
}

#[derive(Debug, Clone)]
struct Ip {
    src: IpAddr,
    dst: IpAddr,
    /// The upper-layer protocol after any IPv6 extension headers.
    proto: u8,
    hop_limit: u8,
    first_fragment: bool,
    later_fragment: bool,
    /// The upper-layer header's bytes (what of them lies inside the IP packet).
    upper: Vec<u8>,
}

impl Ip {
    /// The header the policy reads is all there.
    fn upper_whole(&self) -> bool {
        match self.proto {
            TCP => {
                self.upper.len() >= 20 && {
                    let hdr_len = usize::from(self.upper[12] >> 4) * 4;
                    hdr_len >= 20 && hdr_len <= self.upper.len()
                }
            }
            UDP | ICMP | ICMPV6 => self.upper.len() >= 8,
            _ => true,
        }
    }

    fn ports(&self) -> (u16, u16) {
        (u16::from_be_bytes([self.upper[0], self.upper[1]]), u16::from_be_bytes([self.upper[2], self.upper[3]]))
    }

    fn tcp_flags(&self) -> u8 {
        self.upper[13] & 0x3f
    }

    fn seq(&self) -> u32 {
        u32::from_be_bytes([self.upper[4], self.upper[5], self.upper[6], self.upper[7]])
    }

    fn ack(&self) -> u32 {
        u32::from_be_bytes([self.upper[8], self.upper[9], self.upper[10], self.upper[11]])
    }

    fn window(&self) -> u16 {
        u16::from_be_bytes([self.upper[14], self.upper[15]])
    }

    /// A SYN's window scale option (capped at 14): the first of at most twelve options,
    /// walked as RFC 9293 §3.1 lays them out.
    fn wscale(&self) -> Option<u8> {
        let hdr_len = usize::from(self.upper[12] >> 4) * 4;
        let opts = &self.upper[20..hdr_len];
        let mut at = 0;
        for _ in 0..12 {
            match opts.get(at) {
                None | Some(0) => return None,
                Some(1) => at += 1,
                Some(3) => return (opts.get(at + 1) == Some(&3)).then(|| opts.get(at + 2).map(|s| (*s).min(14))).flatten(),
                Some(_) => {
                    let len = usize::from(*opts.get(at + 1)?);
                    if len < 2 {
                        return None;
                    }
                    at += len;
                }
            }
        }
        None
    }

    /// The tuple an ICMP or ICMPv6 error quotes: (src, dst, proto, sport, dport), when
    /// the quote holds an IP header of the error's family (IPv6 without extension
    /// headers, IPv4 not a later fragment) and four bytes of a TCP or UDP header.
    fn quoted(&self) -> Option<(IpAddr, IpAddr, u8, u16, u16)> {
        if !icmp_error(self) {
            return None;
        }
        let q = &self.upper[8..];
        let (src, dst, proto, at): (IpAddr, IpAddr, u8, usize) = if self.src.is_ipv4() {
            let h = q.get(..20)?;
            let ihl = usize::from(h[0] & 0xf) * 4;
            let offset = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
            if h[0] >> 4 != 4 || ihl < 20 || offset != 0 {
                return None;
            }
            (IpAddr::from([h[12], h[13], h[14], h[15]]), IpAddr::from([h[16], h[17], h[18], h[19]]), h[9], ihl)
        } else {
            let h = q.get(..40)?;
            if h[0] >> 4 != 6 {
                return None;
            }
            let a = |b: &[u8]| IpAddr::from(<[u8; 16]>::try_from(b).expect("16 bytes"));
            (a(&h[8..24]), a(&h[24..40]), h[6], 40)
        };
        if proto != TCP && proto != UDP {
            return None;
        }
        let ports = q.get(at..at + 4)?;
        Some((src, dst, proto, u16::from_be_bytes([ports[0], ports[1]]), u16::from_be_bytes([ports[2], ports[3]])))
    }

    /// The sequence number after this segment: its payload, and one each for SYN and
    /// FIN.
    fn seq_end(&self) -> u32 {
        let payload = self.upper.len() - usize::from(self.upper[12] >> 4) * 4;
        let f = self.tcp_flags();
        self.seq().wrapping_add(payload as u32).wrapping_add(u32::from(f & SYN != 0) + u32::from(f & FIN != 0))
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// A link-local, multicast or limited-broadcast destination.
fn link_scoped(dst: IpAddr) -> bool {
    match dst {
        IpAddr::V4(a) => a.is_link_local() || a.is_multicast() || a.is_broadcast(),
        IpAddr::V6(a) => a.is_multicast() || a.is_unicast_link_local(),
    }
}

/// Ethernet, up to two VLAN tags, then IPv4, IPv6, ARP or something else.
fn parse(frame: &[u8]) -> Frame {
    let Some(mut ether_type) = be16(frame, 12) else { return Frame::Malformed };
    let mut off = 14;
    let is_tag = |t: u16| t == 0x8100 || t == 0x88a8;
    for _ in 0..2 {
        if !is_tag(ether_type) {
            break;
        }
        let Some(t) = be16(frame, off + 2) else { return Frame::Malformed };
        ether_type = t;
        off += 4;
    }
    match ether_type {
        t if is_tag(t) => Frame::Malformed,
        0x0800 => ipv4(frame, off),
        0x86dd => ipv6(frame, off),
        0x0806 => Frame::Arp,
        _ => Frame::NotIp,
    }
}

fn ipv4(frame: &[u8], off: usize) -> Frame {
    let Some(h) = frame.get(off..off + 20) else { return Frame::Malformed };
    let ihl = usize::from(h[0] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if h[0] >> 4 != 4 || ihl < 20 || total < ihl || off + total > frame.len() {
        return Frame::Malformed;
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    let offset = frag & 0x1fff;
    let more = frag & 0x2000 != 0;
    let src = IpAddr::from([h[12], h[13], h[14], h[15]]);
    let dst = IpAddr::from([h[16], h[17], h[18], h[19]]);
    Frame::Ip(Ip {
        src,
        dst,
        proto: h[9],
        hop_limit: h[8],
        first_fragment: offset == 0 && more,
        later_fragment: offset != 0,
        upper: if offset != 0 { Vec::new() } else { frame[off + ihl..off + total].to_vec() },
    })
}

fn ipv6(frame: &[u8], off: usize) -> Frame {
    let Some(h) = frame.get(off..off + 40) else { return Frame::Malformed };
    let end = off + 40 + usize::from(u16::from_be_bytes([h[4], h[5]]));
    if h[0] >> 4 != 6 || end > frame.len() {
        return Frame::Malformed;
    }
    let addr = |b: &[u8]| IpAddr::from(<[u8; 16]>::try_from(b).expect("16 bytes"));
    let mut ip = Ip {
        src: addr(&h[8..24]),
        dst: addr(&h[24..40]),
        proto: h[6],
        hop_limit: h[7],
        first_fragment: false,
        later_fragment: false,
        upper: Vec::new(),
    };
    let payload = &frame[off + 40..end];
    let mut at = 0;
    let is_ext = |p: u8| matches!(p, 0 | 43 | 44 | 51 | 60);
    // Up to eight extension headers; each must lie wholly inside the packet.
    for _ in 0..8 {
        if !is_ext(ip.proto) {
            break;
        }
        let len = match (ip.proto, payload.get(at + 1)) {
            (_, None) => 0,
            (44, Some(_)) => 8,
            (51, Some(l)) => (usize::from(*l) + 2) * 4,
            (_, Some(l)) => (usize::from(*l) + 1) * 8,
        };
        if len == 0 || at + len > payload.len() {
            return if ip.first_fragment { Frame::IncompleteFirstFragment } else { Frame::Malformed };
        }
        let next = payload[at];
        if ip.proto == 44 {
            let word = u16::from_be_bytes([payload[at + 2], payload[at + 3]]);
            if word >> 3 != 0 {
                ip.proto = next;
                ip.later_fragment = true;
                return Frame::Ip(ip);
            }
            ip.first_fragment |= word & 1 == 1;
        }
        ip.proto = next;
        at += len;
    }
    if is_ext(ip.proto) {
        return Frame::Malformed;
    }
    ip.upper = payload[at..].to_vec();
    if ip.first_fragment && !ip.upper_whole() {
        return Frame::IncompleteFirstFragment;
    }
    Frame::Ip(ip)
}

/// A connection in the model's state tables, by the opener's tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Tuple {
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
}

impl Tuple {
    fn back(self) -> Self {
        Self { src: self.dst, dst: self.src, sport: self.dport, dport: self.sport, ..self }
    }
}

/// One direction of a TCP connection as a stateful firewall sees it.
#[derive(Clone, Copy, Debug, Default)]
struct Side {
    /// The number after the highest segment it sent that fitted.
    end: u32,
    /// The highest number it may send: the other side's acknowledgement plus window.
    maxend: u32,
    /// Its largest window, scaled.
    maxwin: u32,
    /// Its latest acknowledgement.
    ack: u32,
    wscale: u8,
    /// Its SYN carried a window scale.
    scales: bool,
    fin: bool,
    /// It was sent an in-window RST it has not answered.
    rst_pending: bool,
    /// The trusted side of a picked-up connection: its segments always fit, and what
    /// it acknowledges the other side sent.
    liberal: bool,
    /// The other side of a picked-up connection: its RST ends the connection only at
    /// the trusted side's acknowledgement.
    unsure: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    SynSent,
    SynRecv,
    Established,
    Closing,
    Reset,
}

#[derive(Clone, Copy, Debug)]
struct Conn {
    /// Roles replies may arrive on.
    reply_roles: &'static [Role],
    /// The opener's NIC; `None` for one picked up from its reply until the opener's
    /// first segment that fits.
    nic: Option<Role>,
    state: State,
    opener: Side,
    responder: Side,
}

/// `a` is `b` or after it, modulo 2^32.
fn at_or_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}

/// What a segment did to its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seg {
    /// Nothing that says where its sender is: it did not fit, or an RST in the window.
    Stays,
    Moved,
    Ends,
}

/// The window a picked-up connection assumes for both sides (TCP's largest, 65535 <<
/// 14, rounded up), and the scale.
const PICKUP_WINDOW: u32 = 1 << 30;
const MAX_WSCALE: u8 = 14;

/// A connection picked up from the trusted side's segment `ip`; `opener`: it is the
/// opener's.
fn picked_up(ip: &Ip, reply_roles: &'static [Role], nic: Option<Role>, opener: bool) -> Conn {
    let end = ip.seq_end();
    let f = ip.tcp_flags();
    let trusted = Side {
        end,
        maxend: end.wrapping_add(PICKUP_WINDOW),
        maxwin: PICKUP_WINDOW,
        ack: ip.ack(),
        wscale: MAX_WSCALE,
        fin: f & FIN != 0,
        liberal: true,
        ..Side::default()
    };
    let other = Side {
        end: ip.ack(),
        maxend: ip.ack().wrapping_add(u32::from(ip.window()) << MAX_WSCALE),
        maxwin: PICKUP_WINDOW,
        ack: end,
        wscale: MAX_WSCALE,
        unsure: true,
        ..Side::default()
    };
    let (o, r) = if opener { (trusted, other) } else { (other, trusted) };
    Conn { reply_roles, nic, state: State::Established, opener: o, responder: r }
}

/// The policy, the sets, and the connections the model has seen.
#[derive(Debug, Default)]
pub struct Model {
    pub sets: AddressSets,
    pub policy: Policy,
    handshakes: HashMap<Tuple, Conn>,
    flows: HashMap<Tuple, Conn>,
    udp: HashMap<Tuple, Conn>,
}

const PARTNER_SIDE: &[Role] = &[Role::Outside, Role::Host];
const EDGE_SIDE: &[Role] = &[Role::Edge];

impl Model {
    pub fn new(sets: AddressSets, policy: Policy) -> Self {
        Self { sets, policy, ..Self::default() }
    }

    /// Connections whose handshake completed, handshakes in progress, UDP flows.
    pub fn table_sizes(&self) -> (usize, usize, usize) {
        (self.flows.len(), self.handshakes.len(), self.udp.len())
    }

    /// The verdict for `frame` arriving on a NIC of `role`, dry-run applied.
    pub fn judge(&mut self, frame: &[u8], role: Option<Role>) -> u32 {
        let Some(role) = role else { return v::PASS_UNATTACHED };
        let verdict = self.judge_with_role(frame, role);
        if self.policy.dry_run && v::is_drop(verdict) { verdict + v::DRY_RUN_OFFSET } else { verdict }
    }

    fn unpoliced(&self) -> u32 {
        if self.policy.unpoliced == Fate::Drop { v::DROP_UNPOLICED } else { v::PASS_UNPOLICED }
    }

    fn judge_with_role(&mut self, frame: &[u8], role: Role) -> u32 {
        let ip = match parse(frame) {
            Frame::Malformed => return v::DROP_MALFORMED,
            Frame::IncompleteFirstFragment => return v::DROP_FRAGMENT,
            Frame::Arp => return v::PASS_ESSENTIAL,
            Frame::NotIp => return self.unpoliced(),
            Frame::Ip(ip) => ip,
        };
        let (src_sets, dst_sets) = (self.sets.lookup(ip.src), self.sets.lookup(ip.dst));
        if role != Role::Edge && src_sets & EDGE_BITS != 0 {
            return v::DROP_SPOOFED;
        }
        // A host NIC polices what is addressed to the machine on its link only: a group
        // Ethernet destination, a link-local, multicast or limited-broadcast address.
        let local = role == Role::Host
            && self.policy.host_link_local == LinkScope::Police
            && (frame.first().is_some_and(|b| b & 1 != 0) || link_scoped(ip.dst));
        if (src_sets | dst_sets) & EDGE_BITS == 0 && !local {
            let essential = neighbour_discovery(&ip) || self.dhcp(&ip, role) || (ip.upper_whole() && !ip.later_fragment && icmp_error(&ip));
            return if self.policy.unpoliced == Fate::Drop && essential { v::PASS_ESSENTIAL } else { self.unpoliced() };
        }
        if ip.first_fragment || ip.later_fragment {
            if self.policy.fragments == Fate::Drop {
                return v::DROP_FRAGMENT;
            }
            if ip.later_fragment {
                return v::PASS_FRAGMENT;
            }
        }
        if !ip.upper_whole() {
            return if ip.first_fragment { v::DROP_FRAGMENT } else { v::DROP_MALFORMED };
        }
        if neighbour_discovery(&ip) || self.dhcp(&ip, role) {
            return v::PASS_ESSENTIAL;
        }
        if let Some((src, dst, proto, sport, dport)) = ip.quoted() {
            let t = Tuple { proto, src, dst, sport, dport };
            let known = |m: &HashMap<Tuple, Conn>| m.contains_key(&t) || m.contains_key(&t.back());
            let related = if proto == UDP { known(&self.udp) } else { known(&self.flows) || known(&self.handshakes) };
            return if related { v::PASS_RELATED } else { v::DROP_NO_RULE };
        }
        let Some(proto) = Proto::from_number(ip.proto) else { return v::DROP_NO_RULE };
        let (sport, dport) = ip.ports();
        let from_edge = role == Role::Edge;
        let rows = self.policy.rules.rows();
        let opens = rows.iter().any(|r| {
            r.proto == proto
                && r.ports.contains(dport)
                && r.opens_from_edge() == from_edge
                && r.source.matches(src_sets)
                && r.destination.matches(dst_sets)
        });
        // A reply comes from the port its flow was opened to: only a packet that could
        // answer some row looks for a flow.
        let answers = rows.iter().any(|r| {
            r.proto == proto
                && r.ports.contains(sport)
                && r.opens_from_edge() != from_edge
                && r.source.matches(dst_sets)
                && r.destination.matches(src_sets)
        });
        let t = Tuple { proto: ip.proto, src: ip.src, dst: ip.dst, sport, dport };
        // The reply of a live flow first (a packet between two rows' ports can be
        // both), as conntrack finds the connection before the rule.
        if answers {
            let back = t.back();
            // The Edge's reply of a connection this node never saw: picked up.
            let pick_up = from_edge && !opens && self.may_pick_up(&ip);
            let reply = if proto == Proto::Udp {
                match self.udp.get(&back) {
                    Some(c) => c.reply_roles.contains(&role),
                    None if pick_up => {
                        let c = Conn {
                            reply_roles: EDGE_SIDE,
                            nic: None,
                            state: State::Established,
                            opener: Side::default(),
                            responder: Side::default(),
                        };
                        self.udp.insert(back, c);
                        true
                    }
                    None => false,
                }
            } else {
                self.tcp_reply(back, &ip, role, pick_up)
            };
            if reply {
                return v::PASS_REPLY;
            }
        }
        if !opens {
            return v::DROP_NO_RULE;
        }
        let replies = if from_edge { PARTNER_SIDE } else { EDGE_SIDE };
        if proto == Proto::Udp {
            let c = self.udp.entry(t).or_insert(Conn {
                reply_roles: replies,
                nic: Some(role),
                state: State::Established,
                opener: Side::default(),
                responder: Side::default(),
            });
            c.nic.get_or_insert(role);
        } else {
            self.tcp_opener(t, &ip, role, replies);
        }
        v::PASS_RULE
    }

    /// A DHCP server's answer on a host NIC, under `host-dhcp`: UDP from 67 to 68, or
    /// DHCPv6 from 547 to 546.
    fn dhcp(&self, ip: &Ip, role: Role) -> bool {
        let (server, client) = if ip.src.is_ipv4() { (67, 68) } else { (547, 546) };
        role == Role::Host && self.policy.host_dhcp && ip.proto == UDP && !ip.later_fragment && ip.upper_whole() && ip.ports() == (server, client)
    }

    /// Whether the Edge's packet `ip` may pick up a connection: pickup is on, and it
    /// is UDP, or TCP with an acknowledgement and neither SYN nor RST.
    fn may_pick_up(&self, ip: &Ip) -> bool {
        self.policy.pickup && (ip.proto == UDP || (ip.proto == TCP && ip.tcp_flags() & ACK != 0 && ip.tcp_flags() & (SYN | RST) == 0))
    }

    /// A TCP packet a row allowed, from the opener.
    fn tcp_opener(&mut self, t: Tuple, ip: &Ip, nic: Role, reply_roles: &'static [Role]) {
        let f = ip.tcp_flags();
        let syn = f & SYN != 0 && f & ACK == 0;
        if let Some(c) = self.flows.get_mut(&t) {
            if c.nic.is_some_and(|n| n != nic) {
                return;
            }
            if !syn {
                let mut c2 = *c;
                match segment(ip, &mut c2.state, &mut c2.opener, &mut c2.responder) {
                    Seg::Ends => {
                        self.flows.remove(&t);
                    }
                    seg => {
                        if seg == Seg::Moved {
                            c2.nic = Some(nic);
                        }
                        *c = c2;
                    }
                }
                return;
            }
            if !matches!(c.state, State::Closing | State::Reset) {
                return;
            }
            self.flows.remove(&t);
        }
        let Some(c) = self.handshakes.get_mut(&t) else {
            // The Edge's segment of a connection this node never saw open.
            if reply_roles == PARTNER_SIDE && self.may_pick_up(ip) {
                self.flows.insert(t, picked_up(ip, reply_roles, Some(nic), true));
                return;
            }
            if syn {
                let opener = Side {
                    end: ip.seq_end(),
                    maxend: ip.seq_end(),
                    maxwin: u32::from(ip.window()),
                    wscale: ip.wscale().unwrap_or(0),
                    scales: ip.wscale().is_some(),
                    ..Side::default()
                };
                self.handshakes.insert(t, Conn { reply_roles, nic: Some(nic), state: State::SynSent, opener, responder: Side::default() });
            }
            return;
        };
        if c.nic != Some(nic) || syn {
            return;
        }
        let isn_next = c.opener.end;
        if f & RST != 0 {
            if ip.seq() == isn_next {
                self.handshakes.remove(&t);
            }
            return;
        }
        if c.state != State::SynRecv || f & ACK == 0 || ip.seq() != isn_next || ip.ack() != c.responder.end {
            return;
        }
        let mut done = *c;
        self.handshakes.remove(&t);
        if !(done.opener.scales && done.responder.scales) {
            done.opener.wscale = 0;
            done.responder.wscale = 0;
        }
        done.state = State::Established;
        done.responder.ack = isn_next;
        update(ip, &mut done.opener, &mut done.responder);
        done.opener.fin |= f & FIN != 0;
        self.flows.insert(t, done);
    }

    /// Whether this is a reply of TCP connection `t`, arriving on `role`; `pick_up`:
    /// the Edge's, picking up `t` if it is not known.
    fn tcp_reply(&mut self, t: Tuple, ip: &Ip, role: Role, pick_up: bool) -> bool {
        let f = ip.tcp_flags();
        if let Some(c) = self.flows.get_mut(&t) {
            if !c.reply_roles.contains(&role) {
                return false;
            }
            let mut c2 = *c;
            if segment(ip, &mut c2.state, &mut c2.responder, &mut c2.opener) == Seg::Ends {
                self.flows.remove(&t);
            } else {
                *c = c2;
            }
            return true;
        }
        if pick_up {
            self.flows.insert(t, picked_up(ip, EDGE_SIDE, None, false));
            return true;
        }
        if f & RST == 0 && f & (SYN | ACK) != SYN | ACK {
            return false;
        }
        let Some(c) = self.handshakes.get_mut(&t) else { return false };
        if !c.reply_roles.contains(&role) {
            return false;
        }
        let acks_syn = f & ACK != 0 && ip.ack() == c.opener.end;
        if f & RST != 0 {
            if acks_syn {
                self.handshakes.remove(&t);
            }
            return true;
        }
        if f & SYN == 0 || !acks_syn || c.state == State::SynRecv {
            return true;
        }
        c.state = State::SynRecv;
        c.responder = Side {
            end: ip.seq_end(),
            ack: ip.ack(),
            maxwin: u32::from(ip.window()),
            maxend: ip.seq_end().wrapping_add(c.opener.maxwin),
            wscale: ip.wscale().unwrap_or(0),
            scales: ip.wscale().is_some(),
            ..Side::default()
        };
        c.opener.maxend = ip.ack().wrapping_add(u32::from(ip.window()));
        true
    }
}

/// Whether a segment from `s` to `r` fits the windows (Linux conntrack's
/// `tcp_in_window` tests).
fn fits(ip: &Ip, s: &Side, r: &Side) -> bool {
    let end = ip.seq_end();
    if !at_or_after(s.maxend, ip.seq()) || !at_or_after(end, s.end.wrapping_sub(r.maxwin)) {
        return false;
    }
    if ip.tcp_flags() & ACK == 0 {
        return true;
    }
    let ack_window = s.maxwin.max(66_000);
    at_or_after(r.end, ip.ack()) && at_or_after(ip.ack(), r.end.wrapping_sub(ack_window))
}

/// Move the bounds past a segment that fits.
fn update(ip: &Ip, s: &mut Side, r: &mut Side) {
    let f = ip.tcp_flags();
    let win = if f & SYN != 0 { u32::from(ip.window()) } else { u32::from(ip.window()) << s.wscale };
    s.maxwin = s.maxwin.max(win);
    if !at_or_after(s.end, ip.seq_end()) {
        s.end = ip.seq_end();
    }
    if f & ACK != 0 {
        if !at_or_after(s.ack, ip.ack()) {
            s.ack = ip.ack();
        }
        let right = ip.ack().wrapping_add(win);
        if !at_or_after(r.maxend, right) {
            r.maxend = right;
        }
    }
}

/// A segment of an established connection from `s` to `r`.
fn segment(ip: &Ip, state: &mut State, s: &mut Side, r: &mut Side) -> Seg {
    if !s.liberal && !fits(ip, s, r) {
        return Seg::Stays;
    }
    let f = ip.tcp_flags();
    if f & RST != 0 {
        if ip.seq() == r.ack || (ip.seq() == s.end && !s.unsure) {
            return Seg::Ends;
        }
        r.rst_pending = true;
        *state = State::Reset;
        return Seg::Stays;
    }
    if s.fin && !at_or_after(s.end, ip.seq_end()) {
        // Data beyond a FIN: the FIN was not the sender's last word.
        s.fin = false;
    }
    update(ip, s, r);
    if s.liberal && f & ACK != 0 && !at_or_after(r.end, ip.ack()) {
        r.end = ip.ack();
    }
    if s.rst_pending {
        s.rst_pending = false;
        if *state == State::Reset {
            *state = State::Established;
        }
    }
    s.fin |= f & FIN != 0;
    if r.fin && f & ACK != 0 && at_or_after(ip.ack(), r.end) {
        *state = State::Closing;
    }
    Seg::Moved
}

/// ICMPv6 router and neighbour discovery from the link (hop limit 255).
fn neighbour_discovery(ip: &Ip) -> bool {
    !ip.src.is_ipv4() && ip.proto == ICMPV6 && !ip.later_fragment && ip.upper_whole() && matches!(ip.upper[0], 133..=137) && ip.hop_limit == 255
}

/// ICMP errors (destination unreachable, time exceeded, parameter problem) and
/// ICMPv6 errors (1-4).
fn icmp_error(ip: &Ip) -> bool {
    match (ip.src.is_ipv4(), ip.proto) {
        (true, ICMP) => matches!(ip.upper[0], 3 | 11 | 12),
        (false, ICMPV6) => matches!(ip.upper[0], 1..=4),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        let mut sets = AddressSets::default();
        sets.insert(edge_filter::SetId::ACCESS_EDGE, "203.0.113.10".parse().unwrap()).unwrap();
        sets.insert(edge_filter::SetId::INTERNAL_EDGE, "192.0.2.10".parse().unwrap()).unwrap();
        Model::new(sets, Policy::default())
    }

    /// A TCP segment (no options, window 0) built by the suites' own packet builder.
    fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
        crate::packet::tcp(src.into(), dst.into(), sport, dport, flags).seq_ack(seq, ack).window(0).build()
    }

    #[test]
    fn the_vendor_table_and_its_replies() {
        let mut m = model();
        let (p, a) = ([198, 51, 100, 20], [203, 0, 113, 10]);
        // Without pickup, the Edge's ACK before the handshake completed answers nothing.
        m.policy.pickup = false;
        assert_eq!(m.judge(&tcp4(p, a, 40000, 5269, SYN, 1000, 0), Some(Role::Outside)), v::PASS_RULE);
        assert_eq!(m.judge(&tcp4(a, p, 5269, 40000, ACK, 5001, 1001), Some(Role::Edge)), v::DROP_NO_RULE);
        assert_eq!(m.judge(&tcp4(a, p, 5269, 40000, SYN | ACK, 5000, 1001), Some(Role::Edge)), v::PASS_REPLY);
        assert_eq!(m.judge(&tcp4(p, a, 40000, 5269, ACK, 1001, 7), Some(Role::Outside)), v::PASS_RULE);
        assert_eq!(m.table_sizes(), (0, 1, 0), "a wrong acknowledgement completes nothing");
        assert_eq!(m.judge(&tcp4(p, a, 40000, 5269, ACK, 1001, 5001), Some(Role::Outside)), v::PASS_RULE);
        assert_eq!(m.table_sizes(), (1, 0, 0));
        assert_eq!(m.judge(&tcp4(a, p, 5269, 40000, ACK, 5001, 1001), Some(Role::Edge)), v::PASS_REPLY);
        assert_eq!(m.judge(&tcp4(a, p, 5269, 40000, ACK, 5001, 1001), Some(Role::Outside)), v::DROP_SPOOFED);
        assert_eq!(m.judge(&tcp4(p, a, 5269, 40001, SYN, 1, 0), Some(Role::Outside)), v::DROP_NO_RULE);
        assert_eq!(m.judge(&tcp4(p, [198, 18, 0, 20], 1, 22, SYN, 1, 0), Some(Role::Outside)), v::PASS_UNPOLICED);
        assert_eq!(m.judge(&tcp4(p, a, 1, 22, SYN, 1, 0), None), v::PASS_UNATTACHED);
    }

    #[test]
    fn the_edges_ack_picks_up_a_connection_and_an_outsiders_does_not() {
        let mut m = model();
        let (p, a) = ([198, 51, 100, 20], [203, 0, 113, 10]);
        assert_eq!(m.judge(&tcp4(p, a, 5269, 40000, ACK, 7, 9), Some(Role::Outside)), v::DROP_NO_RULE);
        assert_eq!(m.table_sizes(), (0, 0, 0));
        assert_eq!(m.judge(&tcp4(a, p, 5269, 40000, ACK, 9, 7), Some(Role::Edge)), v::PASS_REPLY);
        assert_eq!(m.table_sizes(), (1, 0, 0));
        assert_eq!(m.judge(&tcp4(p, a, 40000, 5269, ACK, 7, 9), Some(Role::Outside)), v::PASS_RULE);
    }

    /// A UDP datagram, built as [`tcp4`]'s segments are.
    fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        crate::packet::udp(src.into(), dst.into(), sport, dport).build()
    }

    #[test]
    fn udp_rows_open_flows_whose_replies_pass_from_the_rows_port() {
        let mut sets = AddressSets::default();
        sets.insert(edge_filter::SetId::AV_EDGE, "203.0.113.10".parse().unwrap()).unwrap();
        let spec = edge_filter::rules::TableSpec { tables: vec!["lync-edge-external".into()], ..Default::default() };
        let rules = edge_filter::RuleTable::build(&spec, &sets).unwrap();
        let mut m = Model::new(sets, Policy { rules, ..Policy::default() });
        let (p, av) = ([198, 51, 100, 20], [203, 0, 113, 10]);
        assert_eq!(m.judge(&udp4(av, p, 40000, 3478), Some(Role::Outside)), v::DROP_SPOOFED);
        assert_eq!(m.judge(&udp4(p, av, 3478, 40000), Some(Role::Outside)), v::DROP_NO_RULE, "unsolicited from 3478");
        assert_eq!(m.judge(&udp4(av, p, 40000, 3478), Some(Role::Edge)), v::PASS_RULE);
        assert_eq!(m.judge(&udp4(p, av, 3478, 40000), Some(Role::Edge)), v::DROP_NO_RULE, "a reply on the wrong role");
        assert_eq!(m.judge(&udp4(p, av, 3478, 40000), Some(Role::Outside)), v::PASS_REPLY);
        assert_eq!(m.judge(&udp4(p, av, 3478, 40001), Some(Role::Outside)), v::DROP_NO_RULE, "another tuple");
        assert_eq!(m.judge(&udp4(p, av, 40000, 59999), Some(Role::Outside)), v::PASS_RULE, "the media range's last port");
        assert_eq!(m.judge(&udp4(p, av, 40000, 60000), Some(Role::Outside)), v::DROP_NO_RULE, "one past it");
        assert_eq!(m.table_sizes(), (0, 0, 2));
    }

    #[test]
    fn malformed_and_truncated() {
        let mut m = model();
        let f = tcp4([198, 51, 100, 20], [203, 0, 113, 10], 40000, 5269, SYN, 1, 0);
        for len in 14..f.len() {
            assert_eq!(m.judge(&f[..len], Some(Role::Outside)), v::DROP_MALFORMED, "cut to {len}");
        }
        let mut bad = f.clone();
        bad[14] = 0x44;
        assert_eq!(m.judge(&bad, Some(Role::Outside)), v::DROP_MALFORMED);
    }
}
